"""Plain text out of documents: .txt .md .html .pdf (text layer) .docx .csv .eml.

`extract_text(path)` returns the text, or raises `ExtractionError` whose message is the
per-document reason recorded in the journal (unsupported type, empty, binary, corrupt,
encrypted, no text layer, too large). Only the stdlib and pypdf (imported lazily) are used;
.docx is read with zipfile + ElementTree after refusing zip bombs and DOCTYPE/ENTITY tricks.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".csv", ".eml")

MAX_FILE_BYTES = 200 * 1024 * 1024  # a document bigger than this is refused
DOCX_MAX_MEMBER_BYTES = 64 * 1024 * 1024  # uncompressed word/document.xml limit
DOCX_MAX_RATIO = 200  # uncompressed / compressed beyond this on a large member: a zip bomb
DOCX_MAX_MEMBERS = 5000


class ExtractionError(Exception):
    """A document whose text cannot be extracted; the message is the recorded reason."""


def extract_text(path: Path) -> str:
    """The text of the document at `path`, stripped; raises `ExtractionError` with a reason."""
    suffix = path.suffix.lower()
    extractor = _EXTRACTORS.get(suffix)
    if extractor is None:
        shown = suffix or "(no extension)"
        raise ExtractionError(f"unsupported file type {shown}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ExtractionError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise ExtractionError("empty file")
    if size > MAX_FILE_BYTES:
        raise ExtractionError(f"file too large ({size} bytes > {MAX_FILE_BYTES})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(f"cannot read file: {exc.strerror or exc}") from exc
    text = _normalise(extractor(data))
    if not text:
        raise ExtractionError("empty document (no text)")
    return text


def _normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most two consecutive blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- plain text -------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """Decode bytes that should be text (BOM-aware UTF-8/16, then cp1252); refuse binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ExtractionError("binary or corrupt content (bad UTF-16)") from exc
    head = data[:65536]
    if b"\x00" in head:
        raise ExtractionError("binary content, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    bad = controls + sample.count("\ufffd")
    if sample and bad / len(sample) > 0.05:
        raise ExtractionError("binary content, not text")
    return text


def _extract_plain(data: bytes) -> str:
    return decode_text(data)


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


def _extract_html(data: bytes) -> str:
    return html_to_text(decode_text(data))


# --- PDF --------------------------------------------------------------------------------


def _extract_pdf(data: bytes) -> str:
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise ExtractionError("corrupt PDF (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception as exc:
                raise ExtractionError("encrypted PDF (cannot open)") from exc
            if not opened:
                raise ExtractionError("encrypted PDF (password required)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ExtractionError(f"corrupt PDF: {_short(exc)}") from exc
    except Exception as exc:  # pypdf raises many types on damaged files
        raise ExtractionError(f"corrupt PDF: {type(exc).__name__}: {_short(exc)}") from exc
    if not pages:
        raise ExtractionError("corrupt PDF (no pages)")
    text = "\n\n".join(page.strip() for page in pages)
    if not text.strip():
        raise ExtractionError("no extractable text (scanned?)")
    return text


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# --- DOCX -------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_FORBIDDEN_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _read_zip_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """Read one member after checking its declared size and compression ratio."""
    info = archive.getinfo(name)
    if info.file_size > DOCX_MAX_MEMBER_BYTES:
        raise ExtractionError(f"refused: {name} expands to {info.file_size} bytes (zip bomb?)")
    if info.file_size > 1_000_000 and info.file_size > DOCX_MAX_RATIO * max(info.compress_size, 1):
        raise ExtractionError(f"refused: {name} compression ratio too high (zip bomb?)")
    with archive.open(info) as member:
        data = member.read(DOCX_MAX_MEMBER_BYTES + 1)  # never trust the declared size
    if len(data) > DOCX_MAX_MEMBER_BYTES:
        raise ExtractionError(f"refused: {name} expands beyond its declared size (zip bomb?)")
    return data


def parse_untrusted_xml(data: bytes):  # -> xml.etree.ElementTree.Element
    """Parse XML that has no DOCTYPE/ENTITY declarations (no entity expansion, no XXE)."""
    from xml.etree import ElementTree

    if _FORBIDDEN_XML.search(data):
        raise ExtractionError("refused: XML with DOCTYPE/ENTITY declarations")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ExtractionError(f"corrupt DOCX XML: {exc}") from exc


def _docx_paragraph_text(paragraph) -> str:
    pieces: list[str] = []
    for node in paragraph.iter():
        if node.tag == f"{_W}t" and node.text:
            pieces.append(node.text)
        elif node.tag == f"{_W}tab":
            pieces.append("\t")
        elif node.tag in (f"{_W}br", f"{_W}cr"):
            pieces.append("\n")
    return "".join(pieces)


def _extract_docx(data: bytes) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt DOCX (not a zip archive): {_short(exc)}") from exc
    with archive:
        names = archive.namelist()
        if len(names) > DOCX_MAX_MEMBERS:
            raise ExtractionError(f"refused: DOCX with {len(names)} archive members")
        if "word/document.xml" not in names:
            raise ExtractionError("corrupt DOCX (no word/document.xml)")
        try:
            xml = _read_zip_member(archive, "word/document.xml")
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
            raise ExtractionError(f"corrupt DOCX: {_short(exc)}") from exc
    root = parse_untrusted_xml(xml)
    body = root.find(f"{_W}body")
    if body is None:
        raise ExtractionError("corrupt DOCX (no document body)")
    blocks: list[str] = []
    for child in body:
        if child.tag == f"{_W}p":
            blocks.append(_docx_paragraph_text(child))
        elif child.tag == f"{_W}tbl":
            for row in child.iter(f"{_W}tr"):
                cells = [
                    " ".join(_docx_paragraph_text(p) for p in cell.iter(f"{_W}p")).strip()
                    for cell in row.iter(f"{_W}tc")
                ]
                blocks.append("\t".join(cells))
    return "\n".join(blocks)


# --- CSV --------------------------------------------------------------------------------


def _extract_csv(data: bytes) -> str:
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise ExtractionError(f"corrupt CSV: {exc}") from exc
    return "\n".join(" | ".join(cell.strip() for cell in row) for row in rows if any(row))


# --- e-mail -----------------------------------------------------------------------------


def _extract_eml(data: bytes) -> str:
    import email
    import email.policy

    decode_text(data[:65536])  # refuses binary junk named .eml
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
    except Exception as exc:
        raise ExtractionError(f"corrupt e-mail: {_short(exc)}") from exc
    headers = []
    for name in ("Subject", "From", "To", "Date"):
        try:
            value = message.get(name)
        except Exception:  # malformed header
            value = None
        if value:
            headers.append(f"{name}: {value}")
    body_text = ""
    try:
        body = message.get_body(preferencelist=("plain", "html"))
        if body is not None:
            content = body.get_content()
            if isinstance(content, bytes):
                content = decode_text(content)
            body_text = (
                html_to_text(content) if body.get_content_subtype() == "html" else str(content)
            )
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"corrupt e-mail body: {_short(exc)}") from exc
    if not body_text.strip() and not headers:
        raise ExtractionError("empty e-mail (no headers or body)")
    return "\n".join(headers) + "\n\n" + body_text


_EXTRACTORS: dict[str, Callable[[bytes], str]] = {
    ".txt": _extract_plain,
    ".md": _extract_plain,
    ".markdown": _extract_plain,
    ".html": _extract_html,
    ".htm": _extract_html,
    ".pdf": _extract_pdf,
    ".docx": _extract_docx,
    ".csv": _extract_csv,
    ".eml": _extract_eml,
}
