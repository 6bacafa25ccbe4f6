"""Documents made of pages (PDFs and images): the text layer where it is usable, OCR elsewhere.

`--ocr auto` OCRs the pages of a PDF that draw something but have no usable text (scanned
pages, and pages whose text layer is garbage), and every image; `always` OCRs every page
that draws something; `never` OCRs nothing: pages without text are named in the record
(`unread_pages`), and a document with no usable text at all gets the status `needs_ocr`.
Without an OCR engine, a document that needs one gets `needs_ocr` with the install hint:
never an empty or silently partial text.
"""

from __future__ import annotations

from typing import Any

from sovcli.batch import ocr as ocr_engine
from sovcli.batch.extract import (
    Extracted,
    ExtractionError,
    NeedsOCR,
    OcrOptions,
    short_reason,
)
from sovcli.batch.pdf_text import PdfError, drop_running_lines, open_pdf, read_pages, render_gray

NEVER_HINT = "OCR is off (--ocr never): re-run with --ocr auto --retry-failed"
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
)


def pdf_document(data: bytes, options: OcrOptions) -> Extracted:
    """The text of a PDF: its text layer, OCR for the pages that need it (see the module)."""
    try:
        pdf = open_pdf(data)
    except PdfError as exc:
        raise ExtractionError(str(exc)) from exc
    try:
        return _read_pdf(pdf, options)
    except ExtractionError:
        raise
    except Exception as exc:  # PDFium raises its own error types on damaged pages
        raise ExtractionError(f"corrupt PDF: {short_reason(exc)}") from exc
    finally:
        pdf.close()


def _read_pdf(pdf: Any, options: OcrOptions) -> Extracted:
    pages = read_pages(pdf)
    if not pages:
        raise ExtractionError("corrupt PDF (no pages)")
    if options.mode == "always":
        todo = [p.number for p in pages if p.shows_something]
    else:
        todo = [p.number for p in pages if p.needs_ocr]
    texts = {p.number: p.text if p.usable else "" for p in pages}
    result = Extracted("")
    if todo and options.mode == "never":
        result.unread_pages = todo
        if not any(texts.values()):
            raise NeedsOCR(f"no usable text layer (scanned?): {NEVER_HINT}")
    elif todo:
        engine, lang = _engine(options, f"no usable text layer on {_pages(todo)} of this PDF")
        if len(todo) > ocr_engine.MAX_OCR_PAGES:
            raise ExtractionError(
                f"too large: {len(todo)} pages need OCR (at most {ocr_engine.MAX_OCR_PAGES})"
            )
        for number in todo:
            image = render_gray(pdf, number, ocr_engine.OCR_DPI)
            texts[number] = "\n".join(_ocr(image, lang))
            ocr_engine.page_done()
        result.ocr_pages, result.ocr_engine, result.ocr_lang = todo, engine.label, lang
    ordered = drop_running_lines([texts[p.number] for p in pages])
    result.text = "\n\n".join(text.strip() for text in ordered if text.strip())
    if not result.text:
        raise ExtractionError("no extractable text (scanned?)")
    return result


def image_document(data: bytes, options: OcrOptions) -> Extracted:
    """The OCR'd text of an image (every page of a multi-page TIFF)."""
    if not data.startswith(_IMAGE_MAGIC) and not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise ExtractionError("corrupt image (not a PNG, JPEG, TIFF, BMP or WebP file)")
    if options.mode == "never":
        raise NeedsOCR(f"an image has no text layer: {NEVER_HINT}")
    engine, lang = _engine(options, "an image has no text layer")
    pages = _ocr(data, lang, "corrupt or unreadable image: ")
    result = Extracted("\n\n".join(page.strip() for page in pages))
    result.ocr_pages = [i + 1 for i, page in enumerate(pages) if page.strip()] or [1]
    result.ocr_engine, result.ocr_lang = engine.label, lang
    if not result.text.strip():
        raise ExtractionError("no text found by OCR (blank or unreadable image)")
    return result


def _engine(options: OcrOptions, why: str) -> tuple[ocr_engine.OcrEngine, str]:
    """The OCR engine and languages to use, or NeedsOCR saying `why` and how to install one."""
    engine = ocr_engine.find_engine()
    if engine is None:
        raise NeedsOCR(f"{why} and no OCR engine is installed: {ocr_engine.INSTALL_HINT}")
    return engine, options.lang or ocr_engine.default_languages()


def _ocr(image: bytes, lang: str, failure: str = "") -> list[str]:
    """The OCR engine's pages; a failure is an ExtractionError starting with `failure`."""
    try:
        return ocr_engine.ocr_image(image, lang)
    except ocr_engine.OcrUnavailable as exc:
        raise NeedsOCR(f"{exc}: {ocr_engine.INSTALL_HINT}") from exc
    except RuntimeError as exc:
        raise ExtractionError(f"{failure}{exc}") from exc


def _pages(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
    return f"page{'s' if len(numbers) > 1 else ''} {shown}"
