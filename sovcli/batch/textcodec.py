"""Which encoding a text file is in: BOMs, UTF-8, then a scored guess among legacy codecs.

Files from old systems come in cp1252 (Western Europe), cp1251 (Cyrillic), ISO-8859-2
(Central Europe) or Shift-JIS (Japanese). The same bytes decode without error in several of
them, so each candidate's text is scored for plausibility: letters of one script per word,
accented letters that belong together in one language, no symbols or control characters
inside words, kana and common kanji for Japanese. When two candidates give different texts
and neither is clearly better, the guess is refused (`UndecidableEncoding`) rather than
turned into mojibake; the caller then asks for an explicit encoding. UTF-8 with a few bad
bytes stays UTF-8 (U+FFFD where the bytes were bad). Other legacy encodings (Greek, Turkish,
Arabic, KOI8) are not candidates and may be read as one of these: name them explicitly.
Only the standard library is used.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass

LEGACY_CANDIDATES = ("cp1252", "cp1251", "iso-8859-2", "shift_jis")
SAMPLE_BYTES = 64 * 1024  # the guess is made on this much of the file
MARGIN = 2.0  # the winner must beat a candidate that reads differently by this much
PRIOR = {"cp1252": 1.0}  # on a tie, the most common legacy encoding
MOSTLY_UTF8 = 10  # good multi-byte characters per bad sequence for UTF-8 with damage

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Accented letters of the languages these codecs serve; a text should fit one of them.
_ALPHABETS = {
    "fr": "àâæçéèêëîïôœùûüÿ",
    "de": "äöüß",
    "es": "áéíñóúü",
    "pt": "áâãàçéêíóôõú",
    "it": "àèéìíîòóùú",
    "nl": "áéèëïóöü",
    "nordic": "åäöæøéðþáíóúýü",
    "pl": "ąćęłńóśźż",
    "cs": "áčďéěíňóřšťúůýž",
    "sk": "áäčďéíĺľňóôŕšťúýž",
    "hu": "áéíóöőúüű",
    "ro": "ăâîşţșț",
    "hr": "čćđšž",
    "sl": "čšž",
    "ru": "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "uk": "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя",
    "be": "абвгдеёжзійклмнопрстуўфхцчшыьэюя",
    "bg": "абвгдежзийклмнопрстуфхцчшщъьюя",
    "sr": "абвгдђежзијклљмнњопрстћуфхцчџш",
}
_ALPHABET_SETS = {lang: frozenset(chars) for lang, chars in _ALPHABETS.items()}
# Single-letter words with a non-ASCII letter that exist (prepositions, conjunctions, verbs).
_SHORT_WORDS = frozenset("вкосуияаж" + "àèéò")
# Non-ASCII punctuation that is normal right next to letters.
_WORD_PUNCT = frozenset("’‘'·\u00ad-‐…»«”“„›‹–—")


class UndecidableEncoding(ValueError):
    """The bytes read plausibly in several encodings that give different texts."""

    def __init__(self, candidates: list[str]) -> None:
        super().__init__(" or ".join(candidates))
        self.candidates = candidates


@dataclass(frozen=True)
class Decoded:
    """A decoded text and the encoding it was read with."""

    text: str
    encoding: str


def check_encoding(name: str) -> str:
    """The canonical codec name for `name`; ValueError when Python has no such text codec."""
    try:
        info = codecs.lookup(name)
    except LookupError as exc:
        raise ValueError(f"unknown encoding '{name}'") from exc
    try:
        b"a".decode(info.name, "ignore")  # refuses bytes-to-bytes codecs (base64, rot13, ...)
    except LookupError as exc:
        raise ValueError(f"'{name}' is not a text encoding") from exc
    except UnicodeError:  # a text codec that cannot decode this probe (idna): still one
        pass
    return info.name


def decode(data: bytes, encoding: str | None = None) -> Decoded:
    """Decode `data`: a BOM wins, then `encoding` if given (strict), then UTF-8, then a guess.

    Raises UnicodeDecodeError when a BOM or the given encoding does not fit the bytes, and
    `UndecidableEncoding` when the guess is not clear.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return Decoded(data.decode(codec), codec)
    if encoding is not None:
        return Decoded(data.decode(encoding), check_encoding(encoding))
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    damaged = _mostly_utf8(data)
    if damaged is not None:  # a stray bad byte in UTF-8: U+FFFD there, not mojibake everywhere
        return Decoded(damaged, "utf-8")
    best = guess_legacy(data)
    return Decoded(_decode_lenient(data, best), best)


def guess_legacy(data: bytes) -> str:
    """The legacy encoding that reads `data` most plausibly; `UndecidableEncoding` on a tie."""
    sample = _sample(data)
    scored: list[tuple[float, str, str]] = []
    for codec in LEGACY_CANDIDATES:
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError:
            continue
        scored.append((plausibility(text) + PRIOR.get(codec, 0.0), codec, text))
    if not scored:
        raise UndecidableEncoding(list(LEGACY_CANDIDATES))
    scored.sort(key=lambda item: item[0], reverse=True)
    best_score, best_codec, best_text = scored[0]
    rivals = [c for s, c, t in scored[1:] if t != best_text and best_score - s < MARGIN]
    if rivals or best_score < 0:
        raise UndecidableEncoding([best_codec, *rivals])
    return best_codec


def _mostly_utf8(data: bytes) -> str | None:
    """The text when `data` is UTF-8 with a few bad bytes (at least 10 good non-ASCII
    characters per bad sequence), else None."""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count(b"\xef\xbf\xbd")  # minus real U+FFFD
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if bad > 0 and good >= MOSTLY_UTF8 * bad else None


def _sample(data: bytes) -> bytes:
    """The first SAMPLE_BYTES, cut so that no multi-byte character is split at the end."""
    if len(data) <= SAMPLE_BYTES:
        return data
    cut = data[:SAMPLE_BYTES]
    newline = cut.rfind(b"\n")
    return cut[: newline + 1] if newline > 0 else cut


def _decode_lenient(data: bytes, codec: str) -> str:
    """Decode all of `data` (the guess saw a sample; the rest may hold a stray byte)."""
    return data.decode(codec, errors="replace")


# --- scoring ---------------------------------------------------------------------------


_WORD = re.compile(r"[^\W\d_]+")  # a run of letters
_OTHER = re.compile(r"[^\x00-\x7f\w]")  # a non-ASCII character that is not a letter or digit


def plausibility(text: str) -> float:
    """How much `text` looks like real writing rather than mojibake (higher is better)."""
    score = 0.0
    letters: dict[str, int] = {}
    seen: dict[str, tuple[float, bool]] = {}
    for match in _WORD.finditer(text):
        word = match.group()
        if word.isascii():
            continue
        known = seen.get(word)
        if known is None:
            known = seen[word] = _word_score(word)
        score += known[0]
        if known[1]:  # its accented letters count towards the language fit
            for ch in word:
                if ord(ch) >= 128:
                    lowered = ch.lower()
                    letters[lowered] = letters.get(lowered, 0) + 1
    for match in _OTHER.finditer(text):
        start = match.start()
        score += _symbol_score(match.group(), text[start - 1] if start else " ")
    return score + _language_fit(letters)


@functools.lru_cache(maxsize=4096)
def _script(ch: str) -> str:
    if ch < "\x80":
        return "latin"
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA")):
        return "cjk"
    if name.startswith("HALFWIDTH KATAKANA"):
        return "halfwidth"
    return name.split(" ", 1)[0].lower() if name else "unknown"


def _word_score(word: str) -> tuple[float, bool]:
    """Score one run of letters that holds a non-ASCII one, and whether it is one alphabet's."""
    wide = [ch.lower() for ch in word if ord(ch) >= 128]
    scripts = {_script(ch) for ch in set(word)}
    if "cjk" in scripts or "halfwidth" in scripts:
        return _cjk_score(word, scripts), False
    if len(scripts) > 1:  # Latin and Cyrillic mixed inside one word
        return -4.0 * len(wide), False
    if len(word) == 1:  # too little to say which language; few such words exist
        return (0.5 if wide[0] in _SHORT_WORDS else -1.0), False
    score = 0.0
    if len(wide) >= 2 and not _one_language(frozenset(wide)):
        score -= 1.5 * len(wide)  # "Ïðèâåò": letters of no single language
    if _odd_case(word):
        score -= 2.0
    if "cyrillic" in scripts:  # no camel case in Cyrillic; Greek read as cp1251 has it ("ЕллЬдб")
        score -= 3.0 * sum(1 for a, b in itertools.pairwise(word) if a.islower() and b.isupper())
    return score, True


@functools.lru_cache(maxsize=4096)
def _one_language(letters: frozenset[str]) -> bool:
    return any(letters <= alphabet for alphabet in _ALPHABET_SETS.values())


def _odd_case(word: str) -> bool:
    """Lower case followed by upper case inside a word ("ÏðÈâ"), beyond camel case."""
    changes = sum(1 for a, b in itertools.pairwise(word) if a.islower() and b.isupper())
    return changes > 1 or (changes == 1 and len(word) > 3 and not word[0].isupper())


def _cjk_score(word: str, scripts: set[str]) -> float:
    if scripts - {"cjk", "halfwidth", "latin"}:
        return -2.0 * len(word)
    score = 0.0
    for ch in word:
        script = _script(ch)
        if script == "halfwidth":
            score -= 1.0  # halfwidth katakana: legacy, rare in running text
        elif script == "cjk":
            score += 1.0 if unicodedata.name(ch, "").startswith(("HIRAGANA", "KATAKANA")) else 0.5
    return score


def _symbol_score(ch: str, previous: str) -> float:
    """A non-letter non-ASCII character: controls are impossible, symbols in words unlikely."""
    category = unicodedata.category(ch)
    if category.startswith("C"):
        return -5.0
    if category.startswith("Z"):
        return 0.0
    if ch in _WORD_PUNCT:
        return 0.0
    if previous.isalpha():  # glued to the end of a word: "Za¿ó³æ"
        return -2.0
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 0.5  # ideographic punctuation and full-width forms
    return 0.0


def _language_fit(letters: dict[str, int]) -> float:
    """+1 per accented letter of the best-fitting language, -1 per letter outside it."""
    total = sum(letters.values())
    if total == 0:
        return 0.0
    covered = max(sum(n for ch, n in letters.items() if ch in s) for s in _ALPHABET_SETS.values())
    return covered - (total - covered)
