"""The text of a .docx, read with zipfile and expat in bounded memory.

word/document.xml is streamed from the archive into an expat parser: at most
`MAX_XML_BYTES` are ever inflated (a zip bomb is "too large" the moment it passes that), no
element tree is built (a small file of millions of empty elements no longer costs a gigabyte),
and a DOCTYPE, an entity declaration or an external entity is refused from expat's own
events, after expat has decoded the document - so UTF-16, UTF-8 with or without BOM or any
declared encoding gets the same check.
"""

from __future__ import annotations

import io
import zipfile
from xml.parsers import expat

from sovcli.batch.extract import ExtractionError, short_reason

MAX_XML_BYTES = 64 * 1024 * 1024  # inflated word/document.xml
MAX_MEMBERS = 5000
READ_CHUNK = 1024 * 1024
DOCUMENT = "word/document.xml"
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main "
_P, _T, _TAB, _BR, _CR = _W + "p", _W + "t", _W + "tab", _W + "br", _W + "cr"
_TR, _TC, _BODY = _W + "tr", _W + "tc", _W + "body"


class _Refused(Exception):
    """Raised from an expat handler to stop on a DOCTYPE or entity declaration."""


class _DocxText:
    """Expat handlers that collect paragraphs, and table rows as tab-separated cells."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.paragraphs: list[list[str]] = []  # open paragraphs (text boxes nest them)
        self.rows: list[list[str]] = []  # open table rows: their cells so far
        self.cells: list[list[str]] = []  # open cells: their paragraphs so far
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

    def _start(self, tag: str, _attrs: object) -> None:
        if tag == _T:
            self.in_text += 1
        elif tag == _P:
            self.paragraphs.append([])
        elif tag in (_TAB, _BR, _CR):
            if self.paragraphs:
                self.paragraphs[-1].append("\t" if tag == _TAB else "\n")
        elif tag == _TC:
            self.cells.append([])
        elif tag == _TR:
            self.rows.append([])
        elif tag == _BODY:
            self.seen_body = True

    def _end(self, tag: str) -> None:
        if tag == _T:
            self.in_text -= 1
        elif tag == _P and self.paragraphs:
            self._emit("".join(self.paragraphs.pop()))
        elif tag == _TC and self.cells:
            cell = " ".join(self.cells.pop()).strip()
            if self.rows:
                self.rows[-1].append(cell)
        elif tag == _TR and self.rows:
            self._emit("\t".join(self.rows.pop()))

    def _emit(self, text: str) -> None:
        """A finished paragraph or row goes into the enclosing cell, else into the text."""
        if self.cells:
            self.cells[-1].append(text)
        else:
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


def docx_text(data: bytes) -> str:
    """The paragraphs and table rows of a .docx, one per line; ExtractionError otherwise."""
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
        collector = _DocxText()
        try:
            _stream_member(archive, archive.getinfo(DOCUMENT), collector)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
            raise ExtractionError(f"corrupt DOCX: {short_reason(exc)}") from exc
    if not collector.seen_body:
        raise ExtractionError("corrupt DOCX (no document body)")
    return "\n".join(collector.blocks)


def _stream_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, sink: _DocxText) -> None:
    """Inflate `info` piece by piece into `sink`, never past MAX_XML_BYTES."""
    too_large = (
        f"too large: {info.filename} expands beyond {MAX_XML_BYTES // (1024 * 1024)} MiB "
        "(zip bomb?)"
    )
    if info.file_size > MAX_XML_BYTES:
        raise ExtractionError(too_large)
    total = 0
    with archive.open(info) as member:
        while True:
            chunk = member.read(READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_XML_BYTES:  # the declared size lied
                raise ExtractionError(too_large)
            sink.feed(chunk)
    sink.feed(b"", final=True)
