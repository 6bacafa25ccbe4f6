"""Plain text out of documents: .txt .md .html .pdf .docx .csv .eml .msg and images.

`extract_document(path, ...)` returns an `Extracted` (the text, and which pages were OCR'd
by which engine); `extract_text(path)` just the text. Both raise `ExtractionError` whose
message is the per-document reason recorded in the journal (unsupported type, empty,
binary, corrupt, encrypted, unknown text encoding, too large), or its subclass `NeedsOCR`
(status "needs_ocr") for a scan that cannot be OCR'd here (no engine, or --ocr never).
Text files are decoded by `sovcli.batch.textcodec` (BOM, UTF-8, then a guess among
cp1252/cp1251/ISO-8859-2/Shift-JIS that refuses rather than produce mojibake); PDFs are read
by `sovcli.batch.pdf_text` (pypdfium2), pages without usable text and images are OCR'd by
`sovcli.batch.ocr` (Tesseract); .docx by `sovcli.batch.docx_text`, .eml by
`sovcli.batch.email_text`, .msg by `sovcli.batch.msg_text`. Nothing here bounds time or
memory: `sovcli.batch.isolate` runs this in a worker process with those limits.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from sovcli.batch import textcodec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SUPPORTED_SUFFIXES = (
    ".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".csv", ".eml", ".msg",
    *IMAGE_SUFFIXES,
)  # fmt: skip

MAX_FILE_BYTES = 200 * 1024 * 1024  # a document bigger than this is refused
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)  # the csv module's limit is a C long
CSV_DELIMITERS = ",;\t|"
CSV_SNIFF_LINES = 50  # the delimiter is guessed on this many lines
CSV_SNIFF_CHARS = 4 * 1024 * 1024  # ... or this much text, whichever is less
BINARY_RATIO = 0.05  # control characters beyond this share of a text: binary data
ENCODING_HINT = "re-run with --encoding NAME --retry-failed"


class ExtractionError(Exception):
    """A document whose text cannot be extracted; the message is the recorded reason."""

    status = "error"  # the status of the document's record


class NeedsOCR(ExtractionError):
    """A scan (or pages of one) that cannot be OCR'd here: no engine, or OCR turned off."""

    status = "needs_ocr"


@dataclass(frozen=True)
class OcrOptions:
    """When to OCR (`auto`: pages without usable text; `always`; `never`) and in which
    Tesseract languages (None: those of eng, fra, deu that are installed)."""

    mode: str = "auto"
    lang: str | None = None


@dataclass
class Extracted:
    """A document's text, and the pages that were OCR'd (1-based) with which engine."""

    text: str
    ocr_pages: list[int] = field(default_factory=list)
    ocr_engine: str | None = None  # "tesseract 5.3.0"
    ocr_lang: str | None = None  # "eng+fra+deu"
    unread_pages: list[int] = field(default_factory=list)  # no text, OCR off (--ocr never)

    def record_fields(self) -> dict[str, object]:
        """What a batch record says about OCR (nothing when no page needed it)."""
        fields: dict[str, object] = {}
        if self.ocr_pages:
            fields.update(
                ocr_pages=self.ocr_pages, ocr_engine=self.ocr_engine, ocr_lang=self.ocr_lang
            )
        if self.unread_pages:
            fields["unread_pages"] = self.unread_pages
        return fields


def extract_text(path: Path, encoding: str | None = None) -> str:
    """The text of the document at `path`, stripped; raises `ExtractionError` with a reason.

    `encoding` is used for text formats (.txt .md .html .csv) instead of detecting it; a
    byte-order mark still wins. Scans are OCR'd where needed (`OcrOptions()`).
    """
    return extract_document(path, encoding).text


def extract_document(
    path: Path, encoding: str | None = None, ocr: OcrOptions | None = None
) -> Extracted:
    """The text of the document at `path` and how it was read; see `extract_text`."""
    suffix = path.suffix.lower()
    if suffix not in _EXTRACTORS and suffix not in _RICH:
        shown = suffix or "(no extension)"
        raise ExtractionError(f"unsupported file type {shown}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ExtractionError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise ExtractionError("empty file")
    if size > MAX_FILE_BYTES:
        raise ExtractionError(f"too large: {size} bytes (the limit is {MAX_FILE_BYTES})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(f"cannot read file: {exc.strerror or exc}") from exc
    return extract_bytes(data, suffix, encoding, ocr)


def extract_bytes(
    data: bytes, suffix: str, encoding: str | None = None, ocr: OcrOptions | None = None
) -> Extracted:
    """The text of a document given as bytes, of the type its `suffix` (".pdf") names.

    For the attachments of e-mails as for files; raises ExtractionError like `extract_text`.
    """
    rich = _RICH.get(suffix)
    extractor = _EXTRACTORS.get(suffix)
    if not data:
        raise ExtractionError("empty file")
    if rich is not None:
        result = rich(data, encoding, ocr or OcrOptions())
    elif extractor is not None:
        result = Extracted(extractor(data, encoding))
    else:
        raise ExtractionError(f"unsupported file type {suffix or '(no extension)'}")
    result.text = _normalise(result.text)
    if not result.text:
        raise ExtractionError("empty document (no text)")
    return result


def _normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most two consecutive blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- plain text -------------------------------------------------------------------------


def decode_text(data: bytes, encoding: str | None = None) -> str:
    """Decode bytes that should be text (see `textcodec.decode`); refuse binary data.

    Raises `ExtractionError` for binary content, for bytes that `encoding` cannot decode,
    and when the encoding cannot be told (with a hint to pass --encoding).
    """
    has_bom = data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf"))
    if not has_bom and encoding is None:  # UTF-16 named by --encoding has NUL bytes
        refuse_binary(data)
    try:
        text = textcodec.decode(data, encoding).text
    except UnicodeDecodeError as exc:
        if has_bom:
            raise ExtractionError("binary or corrupt content (bad UTF-16/UTF-8)") from exc
        raise ExtractionError(
            f"not valid {encoding} text (byte {exc.start}): "
            "re-run with the right --encoding and --retry-failed"
        ) from exc
    except textcodec.UndecidableEncoding as exc:
        raise ExtractionError(f"cannot tell the text encoding ({exc}?): {ENCODING_HINT}") from exc
    if _looks_binary(text):
        raise ExtractionError("binary content, not text")
    return text


def refuse_binary(data: bytes) -> None:
    """ExtractionError when the start of `data` is binary (NUL bytes, many control bytes)."""
    head = data[:65536]
    if b"\x00" in head or _looks_binary(head.decode("latin-1")):
        raise ExtractionError("binary content, not text")


def _looks_binary(text: str) -> bool:
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    bad = controls + sample.count("\ufffd")
    return bool(sample) and bad / len(sample) > BINARY_RATIO


def _extract_plain(data: bytes, encoding: str | None) -> str:
    return decode_text(data, encoding)


# --- HTML -------------------------------------------------------------------------------

_SKIPPED_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title",
    "dd", "dt", "main", "nav", "aside", "form",
}  # fmt: skip


class _HTMLText(HTMLParser):
    """Collects visible text; script/style (and the head, except its title) are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _SKIPPED_TAGS and self.skip_depth > 0:
            self.skip_depth -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth == 0 or self.in_title:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, one block per line."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception as exc:  # html.parser is lenient; anything raised means garbage
        raise ExtractionError(f"corrupt HTML: {exc}") from exc
    text = "".join(parser.parts)
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(lines)


def _extract_html(data: bytes, encoding: str | None) -> str:
    return html_to_text(decode_text(data, encoding))


# --- PDF and images (OCR where needed) ----------------------------------------------------


def _extract_pdf(data: bytes, encoding: str | None, ocr: OcrOptions) -> Extracted:
    from sovcli.batch.paged import pdf_document

    return pdf_document(data, ocr)


def _extract_image(data: bytes, encoding: str | None, ocr: OcrOptions) -> Extracted:
    from sovcli.batch.paged import image_document

    return image_document(data, ocr)


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for a record."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# --- DOCX and e-mail (their own modules) ------------------------------------------------


def _extract_docx(data: bytes, encoding: str | None) -> str:
    from sovcli.batch.docx_text import docx_text

    return docx_text(data)


def _extract_eml(data: bytes, encoding: str | None, ocr: OcrOptions) -> Extracted:
    from sovcli.batch.email_text import email_text

    return Extracted(email_text(data, encoding, ocr))


def _extract_msg(data: bytes, encoding: str | None, ocr: OcrOptions) -> Extracted:
    from sovcli.batch.msg_text import msg_text

    return Extracted(msg_text(data, encoding, ocr))


# --- CSV --------------------------------------------------------------------------------


def allow_large_csv_fields() -> None:
    """Lift the csv module's 128 KB field limit (process-wide; it is only ever raised)."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def _extract_csv(data: bytes, encoding: str | None) -> str:
    text = decode_text(data, encoding)
    allow_large_csv_fields()
    delimiter = guess_delimiter(_first_lines(text))
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as exc:
        raise ExtractionError(f"corrupt CSV: {exc}") from exc
    return "\n".join(" | ".join(cell.strip() for cell in row) for row in rows if any(row))


def _first_lines(text: str) -> str:
    """The first CSV_SNIFF_LINES lines (at most CSV_SNIFF_CHARS), whole lines only."""
    end = 0
    for _ in range(CSV_SNIFF_LINES):
        newline = text.find("\n", end, CSV_SNIFF_CHARS)
        if newline < 0:
            return text[:CSV_SNIFF_CHARS] if end == 0 else text[:end]
        end = newline + 1
    return text[:end]


def guess_delimiter(sample: str) -> str:
    """The delimiter that splits the sample's rows into the most consistent field counts.

    In linear time (csv.Sniffer takes seconds on some 8 KB inputs); ',' when nothing splits.
    """
    best, best_score = ",", 0.0
    for delimiter in CSV_DELIMITERS:
        try:
            counts = [len(row) for row in csv.reader(io.StringIO(sample), delimiter=delimiter)]
        except csv.Error:
            continue
        counts = [n for n in counts if n > 0]
        common = max(set(counts), key=counts.count) if counts else 0
        if common < 2:
            continue
        score = counts.count(common) / len(counts) + common / 1000  # ties: more columns
        if score > best_score:
            best, best_score = delimiter, score
    return best


_EXTRACTORS: dict[str, Callable[[bytes, str | None], str]] = {
    ".txt": _extract_plain,
    ".md": _extract_plain,
    ".markdown": _extract_plain,
    ".html": _extract_html,
    ".htm": _extract_html,
    ".docx": _extract_docx,
    ".csv": _extract_csv,
}
_RICH: dict[str, Callable[[bytes, str | None, OcrOptions], Extracted]] = {
    ".pdf": _extract_pdf,
    ".eml": _extract_eml,
    ".msg": _extract_msg,
    **{suffix: _extract_image for suffix in IMAGE_SUFFIXES},
}
