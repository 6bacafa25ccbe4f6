"""Turn a checkpoint's tokenizer into GGUF vocabulary metadata.

Three kinds are read without the `tokenizers`, `sentencepiece` or `transformers` packages:

* byte-level BPE from `tokenizer.json` (Llama 3, Qwen, SmolLM, Mistral Nemo...): token list,
  merges, and the llama.cpp pre-tokenizer type, identified from the tokenizer's own
  pre-tokenizer definition (its split regex and digit rule) against the patterns llama.cpp
  implements, because a wrong type silently changes how text is split;
* SentencePiece `tokenizer.model` (Llama 2, Mistral v0.1-v0.3, Mixtral, Gemma): the protobuf
  is decoded here (pieces, scores, types, the dummy-prefix flag);
* Mistral's `tekken.json` when the folder has no `tokenizer.json`.

Special tokens, add-BOS/EOS flags and the chat template come from tokenizer_config.json
through gguf's `SpecialVocab`.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.errors import ConversionError

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes as they appear in tokenizer.json, mapped to llama.cpp's pre-tokenizer names.
# Source of the patterns: the "original regex from tokenizer.json" notes in llama.cpp's
# src/llama-vocab.cpp, one per pre-tokenizer type.
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

KNOWN_SPLIT_PATTERNS: dict[str, str] = {
    _LLAMA3_RE: "llama-bpe",
    _QWEN2_RE: "qwen2",
    _TEKKEN_RE: "tekken",
    _GPT4O_RE: "gpt-4o",
    _GPT2_RE: "gpt-2",
}

SUPPORTED_PRE_TOKENIZERS = ("llama-bpe", "qwen2", "tekken", "gpt-4o", "gpt-2", "smollm")


@dataclass
class Vocab:
    """Everything the GGUF needs about the tokenizer."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    add_space_prefix: bool | None = None
    source: str = ""

    def add_to_writer(self, writer: Any, folder: Path) -> None:
        """Write the vocabulary, special tokens and chat template to a GGUFWriter."""
        import gguf

        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        add_space_prefix = self.add_space_prefix
        config_prefix = _tokenizer_config(folder).get("add_prefix_space")
        if isinstance(config_prefix, bool):
            add_space_prefix = config_prefix  # the publisher's explicit choice wins
        if add_space_prefix is not None:
            writer.add_add_space_prefix(add_space_prefix)
        if self.merges:
            writer.add_token_merges(self.merges)
        logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
        # Without an explicit add_bos_token, llama.cpp picks the default of the pre-tokenizer.
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(self.tokens))
        special.add_special_token.update(add_special_flags(folder, special.special_token_ids))
        special.add_to_gguf(writer, quiet=True)


def add_special_flags(folder: Path, token_ids: dict[str, int]) -> dict[str, bool]:
    """Whether the tokenizer adds BOS / EOS to a text ({"bos": True, ...}), as its files say.

    tokenizer_config.json's `add_bos_token` / `add_eos_token` win (transformers applies them
    to the post-processor). Otherwise tokenizer.json's post-processor decides: a
    TemplateProcessing (alone or in a Sequence) decides as in gguf-py's SpecialVocab, but by
    token id: a single-text template of several items adds BOS when it starts with the BOS
    token, and one ending in a special token adds EOS when that token is EOS. (SpecialVocab
    compares names and says "no BOS" when tokenizer_config.json names no bos_token.) Only
    what the files state is returned.
    """
    flags = _template_flags(folder, token_ids)
    config = _tokenizer_config(folder)
    for kind in ("bos", "eos"):
        if isinstance(config.get(f"add_{kind}_token"), bool):
            flags[kind] = config[f"add_{kind}_token"]
    return flags


def _template_flags(folder: Path, token_ids: dict[str, int]) -> dict[str, bool]:
    post = _json_object(Path(folder) / "tokenizer.json").get("post_processor")
    if not isinstance(post, dict):
        return {}
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    flags: dict[str, bool] = {}
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict) or step.get("type") != "TemplateProcessing":
            continue
        single = step.get("single")
        if not isinstance(single, list) or not single:
            continue
        specials = step.get("special_tokens")
        specials = specials if isinstance(specials, dict) else {}
        first, last = _special_id(single[0], specials), _special_id(single[-1], specials)
        if len(single) > 1 and token_ids.get("bos") is not None:
            flags["bos"] = first == token_ids["bos"]
        if last is not None and token_ids.get("eos") is not None:
            flags["eos"] = last == token_ids["eos"]
    return flags


def _special_id(item: Any, specials: dict[str, Any]) -> int | None:
    """The token id of a template item that is a special token (None for the text)."""
    token = item.get("SpecialToken") if isinstance(item, dict) else None
    if not isinstance(token, dict):
        return None
    entry = specials.get(token.get("id"))
    ids = entry.get("ids") if isinstance(entry, dict) else None
    return ids[0] if isinstance(ids, list) and len(ids) == 1 and type(ids[0]) is int else None


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    return _json_object(Path(folder) / "tokenizer_config.json")


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file's top-level object ({} when the file is absent or holds no object)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_vocab(folder: Path, vocab_size: int | None, *, pre_override: str | None = None) -> Vocab:
    """Read the tokenizer of a checkpoint folder (tokenizer.model, tokenizer.json or tekken)."""
    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        return load_sentencepiece(folder, vocab_size)
    if (folder / "tokenizer.json").is_file():
        return load_bpe(folder, vocab_size, pre_override=pre_override)
    if (folder / "tekken.json").is_file():
        return load_tekken(folder, vocab_size)
    raise ConversionError(
        f"no tokenizer in {folder}",
        hint="The folder needs tokenizer.json, tokenizer.model (SentencePiece) or tekken.json.",
    )


# ----------------------------------------------------------------------------- BPE


def _looks_special(text: str) -> bool:
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _pre_tokenizer_steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        steps: list[dict[str, Any]] = []
        for item in pre.get("pretokenizers", []):
            steps.extend(_pre_tokenizer_steps(item))
        return steps
    return [pre]


def identify_pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """Name the llama.cpp pre-tokenizer that splits text as this tokenizer.json does.

    Raises ConversionError for a pre-tokenizer llama.cpp would split differently.
    """
    steps = _pre_tokenizer_steps(tokenizer.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    splits = [s for s in steps if s.get("type") == "Split"]
    digits = [s for s in steps if s.get("type") == "Digits"]
    bytelevel = [s for s in steps if s.get("type") == "ByteLevel"]
    if tokenizer.get("normalizer") not in (None, {}) and tokenizer["normalizer"].get(
        "type"
    ) not in (
        "NFC",
        None,
    ):
        raise ConversionError(
            f"tokenizer.json has a {tokenizer['normalizer'].get('type')} normalizer that llama.cpp "
            "does not apply to byte-level BPE",
            hint="Pass --pre-tokenizer NAME if you know the right llama.cpp type.",
        )
    if len(splits) == 1 and not digits and len(bytelevel) <= 1:
        pattern = (splits[0].get("pattern") or {}).get("Regex")
        if pattern in KNOWN_SPLIT_PATTERNS and (
            not bytelevel or not bytelevel[0].get("use_regex", True)
        ):
            return KNOWN_SPLIT_PATTERNS[pattern]
    if not splits and len(bytelevel) == 1 and bytelevel[0].get("use_regex", True):
        if not digits:
            return "gpt-2"
        if (
            kinds == ["Digits", "ByteLevel"]
            and digits[0].get("individual_digits")
            and not bytelevel[0].get("add_prefix_space", False)
        ):
            return "smollm"
    raise ConversionError(
        f"tokenizer.json's pre-tokenizer ({' + '.join(str(k) for k in kinds) or 'none'}) "
        "is not one sovcli can identify",
        hint="Pass --pre-tokenizer with one of: " + ", ".join(SUPPORTED_PRE_TOKENIZERS) + ".",
    )


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    if merges and isinstance(merges[0], list):
        # transformers >= 4.45 stores pairs; spaces inside a part are encoded as U+0120.
        return [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
            for pair in merges
        ]
    return [str(m) for m in merges]


def load_bpe(folder: Path, vocab_size: int | None, *, pre_override: str | None = None) -> Vocab:
    """Read a byte-level BPE tokenizer.json."""
    path = Path(folder) / "tokenizer.json"
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(
            f"tokenizer.json holds a {model.get('type')} model; only BPE is supported there",
            hint="SentencePiece checkpoints need their tokenizer.model beside tokenizer.json.",
        )
    if model.get("byte_fallback") and not _steps_have_bytelevel(tokenizer):
        raise ConversionError(
            "tokenizer.json is a SentencePiece-style BPE (byte fallback, no byte-level step)",
            hint="Put the checkpoint's tokenizer.model in the folder; sovcli reads it directly.",
        )
    pre = pre_override or identify_pre_tokenizer(tokenizer)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {int(t["id"]): t for t in tokenizer.get("added_tokens", [])}
    for tid, tok in added.items():
        vocab[tok["content"]] = tid
    reverse = {tid: text for text, tid in vocab.items()}
    size = max(vocab_size or 0, max(reverse) + 1 if reverse else 0)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            if added[i].get("special") or _looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(NORMAL)
    return Vocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=_merges(model),
        source="tokenizer.json",
    )


def _steps_have_bytelevel(tokenizer: dict[str, Any]) -> bool:
    return any(
        s.get("type") == "ByteLevel" for s in _pre_tokenizer_steps(tokenizer.get("pre_tokenizer"))
    )


# ----------------------------------------------------------------------------- tekken


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabs."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def load_tekken(folder: Path, vocab_size: int | None) -> Vocab:
    """Read Mistral's tekken.json (special tokens first, then the ranked byte vocabulary).

    Merges are rebuilt from the ranks: each multi-byte token is the merge of the split of
    its bytes into two known tokens whose ranks are both lower, as tiktoken does.
    """
    path = Path(folder) / "tekken.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    config = data.get("config", {})
    n_special = int(config.get("default_num_special_tokens", len(data.get("special_tokens", []))))
    n_vocab = int(config.get("default_vocab_size", 0)) or None
    specials = data.get("special_tokens") or []
    ranks = [base64.b64decode(v["token_bytes"]) for v in data.get("vocab", [])]
    if n_vocab:
        ranks = ranks[: n_vocab - n_special]
    byte_map = _bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_special):
        if i < len(specials):
            tokens.append(specials[i]["token_str"])
        else:
            tokens.append(f"<SPECIAL_{i}>")
        types.append(CONTROL)
    rank_of = {b: r for r, b in enumerate(ranks)}
    merges: list[str] = []
    for b in ranks:
        tokens.append(enc(b))
        types.append(NORMAL)
        if len(b) > 1:
            rank = rank_of[b]
            best: tuple[int, int] | None = None
            for cut in range(1, len(b)):
                left, right = b[:cut], b[cut:]
                rl, rr = rank_of.get(left), rank_of.get(right)
                if rl is not None and rr is not None and rl < rank and rr < rank:
                    key = (max(rl, rr), cut)
                    if best is None or key < best:
                        best = key
            if best is not None:
                cut = best[1]
                merges.append(f"{enc(b[:cut])} {enc(b[cut:])}")
    size = max(vocab_size or 0, len(tokens))
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
    return Vocab(
        model="gpt2",
        pre="tekken",
        tokens=tokens,
        token_types=types,
        merges=merges,
        source="tekken.json",
    )


# ----------------------------------------------------------------------------- SentencePiece


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ConversionError("tokenizer.model is truncated")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ConversionError(f"tokenizer.model has an unknown protobuf wire type {wire}")
        yield number, wire, value


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece ModelProto that llama.cpp needs."""

    pieces: list[tuple[str, float, int]]
    add_dummy_prefix: bool = True
    model_type: int = 1  # 1 unigram, 2 bpe


def parse_sentencepiece(data: bytes) -> SentencePieceModel:
    """Decode a SentencePiece ModelProto (pieces, scores, types, dummy prefix flag)."""
    pieces: list[tuple[str, float, int]] = []
    model = SentencePieceModel(pieces=pieces)
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            piece, score, kind = "", 0.0, NORMAL
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    (score,) = struct.unpack("<f", v2)
                elif n2 == 3 and w2 == 0:
                    kind = int(v2)
            pieces.append((piece, score, kind))
        elif number == 2 and wire == 2:  # trainer_spec
            for n2, w2, v2 in _fields(value):
                if n2 == 3 and w2 == 0:
                    model.model_type = int(v2)
        elif number == 3 and wire == 2:  # normalizer_spec
            for n2, w2, v2 in _fields(value):
                if n2 == 3 and w2 == 0:
                    model.add_dummy_prefix = bool(v2)
    if not pieces:
        raise ConversionError("tokenizer.model holds no pieces")
    return model


def load_sentencepiece(folder: Path, vocab_size: int | None) -> Vocab:
    """Read tokenizer.model plus added tokens from added_tokens.json / tokenizer_config.json."""
    folder = Path(folder)
    try:
        spm = parse_sentencepiece((folder / "tokenizer.model").read_bytes())
    except UnicodeDecodeError as exc:
        raise ConversionError("tokenizer.model is not a SentencePiece model") from exc
    size = vocab_size or len(spm.pieces)
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    for i, (piece, score, kind) in enumerate(spm.pieces[:size]):
        tokens[i], scores[i], types[i] = piece, score, kind if 1 <= kind <= 6 else NORMAL
    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        for text, tid in json.loads(added_file.read_text(encoding="utf-8")).items():
            if int(tid) < size:
                tokens[int(tid)], scores[int(tid)], types[int(tid)] = text, -1000.0, USER_DEFINED
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for tid_str, info in (config.get("added_tokens_decoder") or {}).items():
            tid = int(tid_str)
            if tid >= size:
                continue
            text = info["content"]
            if info.get("special") or _looks_special(text):
                types[tid] = CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[tid] = USER_DEFINED
            tokens[tid], scores[tid] = text, -1000.0
    return Vocab(
        model="llama",
        pre="default",
        tokens=tokens,
        token_types=types,
        scores=scores,
        add_space_prefix=spm.add_dummy_prefix,
        source="tokenizer.model",
    )
