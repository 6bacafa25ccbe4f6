"""The text of a .docx, read with zipfile and expat in bounded memory.

Each XML part is streamed from the archive into an expat parser: at most `MAX_XML_BYTES` are
ever inflated in all (a zip bomb is "too large" the moment it passes that), no element tree is
built (a small file of millions of empty elements no longer costs a gigabyte; python-docx
builds lxml trees and took 1.1 GB on such a file), and a DOCTYPE, an entity declaration or an
external entity is refused from expat's own events, after expat has decoded the document -
so UTF-16, UTF-8 with or without BOM or any declared encoding gets the same check.

What comes out: the headers (each distinct one once, labelled "[Header]"), the body with its
tables as Markdown tables (a table nested in a cell is written inside that cell, once, as
"a, b; c, d"), then footnotes, endnotes, footers ("[Footer]") and comments ("[Comment by
NAME]"). Deleted text of tracked changes (w:delText) is left out.
"""

from __future__ import annotations

import io
import zipfile
from xml.parsers import expat

from sovcli.batch.extract import ExtractionError, short_reason
from sovcli.batch.markdown import markdown_table

MAX_XML_BYTES = 64 * 1024 * 1024  # inflated XML, all parts together
MAX_MEMBERS = 5000
MAX_PARTS = 64  # headers, footers ... beyond this many are left out
READ_CHUNK = 1024 * 1024
DOCUMENT = "word/document.xml"
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main "
_P, _T, _TAB, _BR, _CR = _W + "p", _W + "t", _W + "tab", _W + "br", _W + "cr"
_TBL, _TR, _TC, _BODY = _W + "tbl", _W + "tr", _W + "tc", _W + "body"
_COMMENT, _AUTHOR = _W + "comment", _W + "author"
_EXTRA_PARTS = (  # (file name prefix in word/, label or None)
    ("header", "[Header]"),
    ("footnotes", None),
    ("endnotes", None),
    ("footer", "[Footer]"),
    ("comments", None),
)


class _Refused(Exception):
    """Raised from an expat handler to stop on a DOCTYPE or entity declaration."""


class _DocxText:
    """Expat handlers that collect paragraphs, tables (as Markdown) and comments."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.paragraphs: list[list[str]] = []  # open paragraphs (text boxes nest them)
        self.tables: list[list[list[str]]] = []  # open tables: their rows of cells so far
        self.cells: list[list[str]] = []  # open cells: their paragraphs so far
        self.comment: tuple[str, list[str]] | None = None  # open comment: author, paragraphs
        self.in_text = 0
        self.seen_body = False
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.buffer_text = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        parser.ExternalEntityRefHandler = self._refuse
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        self.parser = parser

    def _refuse(self, *_args: object) -> None:
        raise _Refused

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == _T:
            self.in_text += 1
        elif tag == _P:
            self.paragraphs.append([])
        elif tag in (_TAB, _BR, _CR):
            if self.paragraphs:
                self.paragraphs[-1].append("\t" if tag == _TAB else "\n")
        elif tag == _TBL:
            self.tables.append([])
        elif tag == _TR:
            if self.tables:
                self.tables[-1].append([])
        elif tag == _TC:
            self.cells.append([])
        elif tag == _COMMENT:
            self.comment = (attrs.get(_AUTHOR) or "unknown", [])
        elif tag == _BODY:
            self.seen_body = True

    def _end(self, tag: str) -> None:
        if tag == _T:
            self.in_text -= 1
        elif tag == _P and self.paragraphs:
            self._emit("".join(self.paragraphs.pop()))
        elif tag == _TC and self.cells:
            cell = " ".join(part for part in self.cells.pop() if part.strip())
            if self.tables and self.tables[-1]:
                self.tables[-1][-1].append(cell)
        elif tag == _TBL and self.tables:
            rows = self.tables.pop()
            if self.cells:  # nested in a cell: once, inline
                self.cells[-1].append("; ".join(", ".join(row) for row in rows if any(row)))
            else:
                self._emit(f"\n{markdown_table(rows)}\n")  # blank lines around it
        elif tag == _COMMENT and self.comment is not None:
            author, parts = self.comment
            self.comment = None
            text = " ".join(part for part in parts if part.strip())
            if text:
                self.blocks.append(f"[Comment by {author}] {text}")

    def _emit(self, text: str) -> None:
        """A finished paragraph or table goes into the enclosing cell, comment, or the text."""
        if self.cells:
            self.cells[-1].append(text)
        elif self.comment is not None:
            self.comment[1].append(text)
        elif text or self.blocks:
            self.blocks.append(text)

    def _data(self, text: str) -> None:
        if self.in_text and self.paragraphs:
            self.paragraphs[-1].append(text)

    def feed(self, chunk: bytes, final: bool = False) -> None:
        """Parse the next piece of the XML; ExtractionError for a DOCTYPE or broken XML."""
        try:
            self.parser.Parse(chunk, final)
        except _Refused:
            raise ExtractionError("refused: XML with DOCTYPE/ENTITY declarations") from None
        except expat.ExpatError as exc:
            raise ExtractionError(f"corrupt DOCX XML: {exc}") from exc

    @property
    def text(self) -> str:
        """The blocks collected, one per line."""
        return "\n".join(self.blocks).strip("\n")


def docx_text(data: bytes) -> str:
    """The text of a .docx (see the module's docstring); ExtractionError otherwise."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt DOCX (not a zip archive): {short_reason(exc)}") from exc
    with archive:
        names = archive.namelist()
        if len(names) > MAX_MEMBERS:
            raise ExtractionError(f"refused: DOCX with {len(names)} archive members")
        if DOCUMENT not in names:
            raise ExtractionError("corrupt DOCX (no word/document.xml)")
        budget = _Budget()
        body = _parse_part(archive, DOCUMENT, budget)
        if not body.seen_body:
            raise ExtractionError("corrupt DOCX (no document body)")
        extras = {
            prefix: _extra_texts(archive, names, prefix, budget) for prefix, _ in _EXTRA_PARTS
        }
    blocks = [f"[Header]\n{text}" for text in extras["header"]]
    blocks.append(body.text)
    for prefix, label in _EXTRA_PARTS[1:]:
        blocks.extend(f"{label}\n{text}" if label else text for text in extras[prefix])
    return "\n\n".join(block for block in blocks if block.strip())


def _extra_texts(
    archive: zipfile.ZipFile, names: list[str], prefix: str, budget: _Budget
) -> list[str]:
    """The distinct non-empty texts of word/PREFIX*.xml, in name order."""
    parts = sorted(
        name
        for name in names
        if name.startswith(f"word/{prefix}") and name.endswith(".xml") and "/" not in name[5:]
    )[:MAX_PARTS]
    texts: list[str] = []
    for name in parts:
        text = _parse_part(archive, name, budget).text.strip()
        if text and text not in texts:
            texts.append(text)
    return texts


class _Budget:
    """The inflated bytes left for all the parts of one document."""

    def __init__(self) -> None:
        self.left = MAX_XML_BYTES

    def take(self, size: int, name: str) -> None:
        self.left -= size
        if self.left < 0:
            raise ExtractionError(
                f"too large: {name} expands beyond {MAX_XML_BYTES // (1024 * 1024)} MiB (zip bomb?)"
            )


def _parse_part(archive: zipfile.ZipFile, name: str, budget: _Budget) -> _DocxText:
    collector = _DocxText()
    try:
        _stream_member(archive, archive.getinfo(name), collector, budget)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {short_reason(exc)}") from exc
    return collector


def _stream_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, sink: _DocxText, budget: _Budget
) -> None:
    """Inflate `info` piece by piece into `sink`, never past the budget."""
    if info.file_size > budget.left:
        budget.take(info.file_size, info.filename)
    with archive.open(info) as member:
        while True:
            chunk = member.read(READ_CHUNK)
            if not chunk:
                break
            budget.take(len(chunk), info.filename)  # the declared size may lie
            sink.feed(chunk)
    sink.feed(b"", final=True)
