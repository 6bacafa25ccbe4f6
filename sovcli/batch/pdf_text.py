"""The text of a PDF, page by page, with pypdfium2 (PDFium, the PDF engine of Chromium).

PDFium was chosen over pypdf for recall and speed (figures in docs/batch.md): it orders the
text of a page by position, marks the hyphens it sees at line ends (U+FFFE) and maps glyphs
through the fonts' tables. It is C code, so it only ever runs in the extraction worker,
under its memory and time limits.

What is done to the text here:
- ligature characters (U+FB00-FB06: "ﬁ") become their letters ("fi"); nothing else is
  normalised;
- words hyphenated at a line end are joined ("exam-" / "ple" -> "example"), but a hyphen
  before a capital stays ("self-" / "Evident" -> "self-Evident");
- running headers and footers, the same line (page numbers aside) at the top or bottom of
  most pages, are dropped;
- ruled tables become Markdown tables (`sovcli.batch.pdf_tables`);
- a page in columns is read column by column (`sovcli.batch.pdf_order`);
- a page is "usable" when its text is real text: not empty, not control or private-use
  characters, not the byte-swapped glyph codes some producers leave (a CMYK test file reads
  as CJK ideographs "䴀甀氀琀椀"), not mostly punctuation. A page that is not usable but
  draws something is one for OCR (`needs_ocr`); a blank page is just empty.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sovcli.batch.pdf_order import column_text
from sovcli.batch.pdf_tables import find_tables, page_text_with_tables

LIGATURES = {chr(cp): unicodedata.normalize("NFKC", chr(cp)) for cp in range(0xFB00, 0xFB07)}
_LIGATURE = re.compile("[\ufb00-\ufb06]")
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u00ad\u2010]\n([^\W\d_])")
_MARKED_HYPHEN = re.compile(r"\ufffe\n?(\w)")  # PDFium's mark for a hyphen at a line end
_REPEATS = re.compile(r"(\S)\1{3,}|(?:[.\u00b7_-] ?){3,}")  # dot leaders in a contents table
MIN_CHARS = 5  # fewer characters than this on a page that shows an image: OCR it
MAX_BAD_SHARE = 0.1
MIN_ALNUM_SHARE = 0.4
EDGE_LINES = 2  # lines at the top and at the bottom of a page that may be headers/footers
MIN_PAGES_FOR_RUNNING = 3
RUNNING_SHARE = 0.6  # a line on this share of the pages is a running header or footer
_BAD_CATEGORIES = frozenset({"Cc", "Co", "Cn", "Cs"})


class PdfError(Exception):
    """The file cannot be opened as a PDF; the message is the reason."""


@dataclass
class PdfPage:
    """One page: its text layer, whether that text is usable, and whether it shows anything."""

    number: int  # 1-based
    text: str
    usable: bool
    shows_something: bool

    @property
    def needs_ocr(self) -> bool:
        """A page whose content is not in its text layer."""
        return not self.usable and self.shows_something


def open_pdf(data: bytes) -> Any:
    """A pypdfium2 PdfDocument; PdfError for a corrupt file or one that needs a password."""
    try:
        import pypdfium2 as pdfium
    except ImportError as exc:  # an install without it: say so, per document
        raise PdfError("reading PDFs needs pypdfium2 (pip install pypdfium2)") from exc

    if not data.lstrip()[:1024].lstrip().startswith(b"%PDF") and b"%PDF" not in data[:1024]:
        raise PdfError("corrupt PDF (no %PDF header)")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise PdfError("encrypted PDF (password required)") from exc
        detail = message.split("(PDFium: ", 1)[-1].rstrip(").")
        raise PdfError(f"corrupt PDF: {detail}") from exc


def read_pages(pdf: Any) -> list[PdfPage]:
    """Every page's text layer (ligatures and line-end hyphens repaired)."""
    pages = []
    for index in range(len(pdf)):
        page = pdf[index]
        try:
            textpage = page.get_textpage()
            try:
                text = repair(textpage.get_text_range())
                usable = usable_text(text)  # judged on the text alone, without table markup
                tables = find_tables(page, textpage) if usable else []
                if tables:
                    text = repair(page_text_with_tables(page, textpage, tables))
                elif usable:
                    ordered = column_text(textpage)  # None: no columns, PDFium's order
                    text = repair(ordered) if ordered is not None else text
            finally:
                textpage.close()
            shows = any(True for _ in page.get_objects(max_depth=1))
        finally:
            page.close()
        pages.append(PdfPage(index + 1, text, usable, shows))
    return pages


def repair(raw: str) -> str:
    """PDFium's page text made plain: newlines, ligatures split, hyphenated words joined."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = _MARKED_HYPHEN.sub(_marked_hyphen, text)
    text = text.replace("\ufffe", "-")
    text = _LIGATURE.sub(lambda m: LIGATURES[m.group()], text)
    return _HYPHEN_BREAK.sub(_line_end_hyphen, text)


def _line_end_hyphen(match: re.Match[str]) -> str:
    following = match.group(1)
    return following if following.islower() else match.group(0)


def _marked_hyphen(match: re.Match[str]) -> str:
    following = match.group(1)
    return following if following.islower() else "-" + following


def usable_text(text: str) -> bool:
    """Whether a page's text layer is real text (see the module's docstring)."""
    chars = "".join(_REPEATS.sub(".", text).split())
    if len(chars) < MIN_CHARS:
        return bool(chars) and all(ch.isalnum() or ch in ".,:;-()" for ch in chars)
    bad = sum(1 for ch in chars if _bad_char(ch))
    if bad / len(chars) > MAX_BAD_SHARE:
        return False
    alnum = sum(1 for ch in chars if ch.isalnum())
    return alnum / len(chars) >= MIN_ALNUM_SHARE


def _bad_char(ch: str) -> bool:
    code = ord(ch)
    if code in (0xFFFD, 0xFFFE) or unicodedata.category(ch) in _BAD_CATEGORIES:
        return True
    return code > 0x2000 and code & 0xFF == 0 and 0x20 <= code >> 8 <= 0x7E  # 'M' as U+4D00


def drop_running_lines(pages: list[str]) -> list[str]:
    """The pages without the headers and footers repeated on most of them.

    A line among the first or last EDGE_LINES of a page is running when the same line,
    digits aside (page numbers), is at an edge of at least RUNNING_SHARE of the pages. A page
    that would be left with nothing keeps its lines (short scans: "Page 2 of the contract").
    """
    if len(pages) < MIN_PAGES_FOR_RUNNING:
        return pages
    split = [page.split("\n") for page in pages]
    edges = [_edge_indices(lines) for lines in split]
    counts: Counter[str] = Counter()
    for lines, edge in zip(split, edges, strict=True):
        counts.update({_shape(lines[i]) for i in edge})
    threshold = max(2, int(len(pages) * RUNNING_SHARE + 0.999))
    running = {shape for shape, n in counts.items() if n >= threshold}
    if not running:
        return pages
    kept = []
    for page, lines, edge in zip(pages, split, edges, strict=True):
        rest = [
            line for i, line in enumerate(lines) if i not in edge or _shape(line) not in running
        ]
        kept.append("\n".join(rest) if any(line.strip() for line in rest) else page)
    return kept


def _edge_indices(lines: list[str]) -> set[int]:
    """The indices of the first and last EDGE_LINES lines that are not blank."""
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    return set(nonblank[:EDGE_LINES] + nonblank[-EDGE_LINES:])


def _shape(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.split())).lower()


def render_gray(pdf: Any, number: int, dpi: int) -> bytes:
    """Page `number` (1-based) rendered in grayscale as a PGM image (for the OCR engine)."""
    page = pdf[number - 1]
    try:
        bitmap = page.render(scale=dpi / 72, grayscale=True)
        try:
            array = bitmap.to_numpy()
        finally:
            bitmap.close()
    finally:
        page.close()
    if array.ndim == 3:  # some PDFium builds give BGR(x) even in grayscale mode
        array = array[:, :, :3].mean(axis=2).astype("uint8")
    height, width = array.shape[:2]
    return b"P5\n%d %d\n255\n" % (width, height) + array.tobytes()
