"""Issue 16, item 2: faithful text from born-digital PDFs (PDFium through pypdfium2).

The PDFs are written here the way typesetters write them: ligature glyphs (/fi, /fl) in
the font's encoding, words hyphenated at line ends, a running header and a page footer on
every page, and a scan whose invisible text layer is garbage (as a CMYK test file of
ocrmypdf's reads: byte-swapped glyph codes). None of these tests runs OCR.
"""

from __future__ import annotations

from pathlib import Path

import pypdfium2
import pytest
from docgen_scans import table_pdf, text_pdf, two_column_pdf

from sovcli.batch.extract import ExtractionError, OcrOptions, extract_document, extract_text
from sovcli.batch.paged import pdf_document
from sovcli.batch.pdf_text import drop_running_lines, repair, usable_text

PAGES = [
    [
        "ACME Bank - Internal use only",
        f"Chapter {letter}: office {letter}",
        f"The financial benefits of office {letter} flow from",
        "the exam-",
        f"ple of branch {letter}; a self-",
        f"Evident truth {letter}.",
        f"Page {number} of 4",
    ]
    for number, letter in enumerate("ABCD", start=1)
]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_ligatures_become_letters_and_hyphenated_words_are_joined(tmp_path: Path) -> None:
    import io

    from pypdf import PdfReader

    path = _write(tmp_path, "report.pdf", text_pdf(PAGES, ligatures=True))
    layer = PdfReader(io.BytesIO(path.read_bytes())).pages[0].extract_text()
    assert "\ufb01nancial" in layer and "\ufb02ow" in layer  # what the text layer holds
    raw = pypdfium2.PdfDocument(str(path))[0].get_textpage().get_text_range()
    assert "the exam\ufffeple" in raw  # PDFium marks the line-end hyphen
    text = extract_text(path)
    assert "\ufb01" not in text and "\ufb02" not in text and "\ufffe" not in text
    assert "The financial benefits of office A flow from" in text
    assert "the example of branch A; a self-Evident truth A." in text  # capital: hyphen kept


def test_running_header_and_page_footer_are_dropped_once_per_page(tmp_path: Path) -> None:
    text = extract_text(_write(tmp_path, "report.pdf", text_pdf(PAGES)))
    assert "ACME Bank - Internal use only" not in text
    assert "of 4" not in text
    for letter in "ABCD":  # the body of every page is kept, in page order
        assert f"Chapter {letter}: office {letter}" in text
    assert text.index("office A") < text.index("office B") < text.index("office D")


def test_a_line_on_only_some_pages_is_kept() -> None:
    pages = ["Draft\nBody one", "Body two", "Body three", "Draft\nBody four"]
    assert drop_running_lines(pages) == pages  # 2 of 4 pages: not running
    assert drop_running_lines(["Title\nA", "Title\nB"]) == ["Title\nA", "Title\nB"]  # too few
    short = ["Page 1 of the deed", "Page 2 of the deed", "Page 3 of the deed"]
    assert drop_running_lines(short) == short  # nothing else on the pages: kept


def test_short_documents_keep_their_headers(tmp_path: Path) -> None:
    text = extract_text(_write(tmp_path, "two.pdf", text_pdf(PAGES[:2])))
    assert text.count("ACME Bank - Internal use only") == 2


def test_repair_joins_only_lowercase_continuations() -> None:
    assert repair("exam-\r\nple") == "example"
    assert repair("Jean-\r\nPierre") == "Jean-\nPierre"
    assert repair("abso\ufffelute") == "absolute"  # PDFium's own mark
    assert repair("e\ufb03cient") == "efficient"
    assert repair("2024-\n05") == "2024-\n05"


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        ("The applicant declares that the information is complete.", True),
        ("䴀甀氀琀椀挀漀氀漀爀䈀氀愀挀欀\n倀甀爀攀䈀氀愀挀欀", False),  # "MulticolorBlack" swapped
        ('"7+%-', False),  # a font without a Unicode map
        ("\x19\x12\x05\x07\x11\x13", False),
        ("Contents\nIntroduction . . . . . . . . . . . . 1\nMethods . . . . . . . . 7", True),
        ("会社の規則は全員に適用されます。", True),  # real CJK text is text
        ("", False),
        ("12", True),  # a page number alone is what the page shows
        ("#$%&'()*+,-./#$%&'()*+,", False),
    ],
)
def test_usable_text_layers(text: str, usable: bool) -> None:
    assert usable_text(text) is usable


def test_never_mode_names_pages_without_text_and_keeps_the_others(tmp_path: Path) -> None:
    from docgen_scans import make_mixed_pdf

    data = make_mixed_pdf(["Born-digital page one."], "A scanned second page.")
    result = pdf_document(data, OcrOptions(mode="never"))
    assert result.text == "Born-digital page one."
    assert result.unread_pages == [2] and result.ocr_pages == []
    assert result.record_fields() == {"unread_pages": [2]}


def test_encrypted_corrupt_and_blank_pdfs_get_their_reason(tmp_path: Path) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append_pages_from_reader(PdfReader(io.BytesIO(text_pdf([["Top secret"]]))))
    writer.encrypt("open-sesame")
    buffer = io.BytesIO()
    writer.write(buffer)
    locked = _write(tmp_path, "locked.pdf", buffer.getvalue())
    with pytest.raises(ExtractionError, match=r"^encrypted PDF \(password required\)$"):
        extract_document(locked)
    cut = _write(tmp_path, "cut.pdf", text_pdf([["Half a file"]])[:200])
    with pytest.raises(ExtractionError, match=r"^corrupt PDF"):
        extract_document(cut)
    blank = PdfWriter()
    blank.add_blank_page(612, 792)
    buffer = io.BytesIO()
    blank.write(buffer)
    with pytest.raises(ExtractionError, match=r"^no extractable text \(scanned\?\)$"):
        extract_document(_write(tmp_path, "blank.pdf", buffer.getvalue()))


TABLE = [
    ["Name", "Country", "Amount"],
    ["Alice Martin", "France", "1200"],
    ["Bernd Müller", "Germany", "845"],
]
MARKDOWN = (
    "| Name | Country | Amount |\n| --- | --- | --- |\n"
    "| Alice Martin | France | 1200 |\n| Bernd Müller | Germany | 845 |"
)


@pytest.mark.parametrize("style", ["lines", "rects"])
def test_a_ruled_pdf_table_becomes_a_markdown_table_in_place(tmp_path: Path, style: str) -> None:
    data = table_pdf(TABLE, "Payments due this quarter:", "Approved by the board.", style)
    text = extract_text(_write(tmp_path, "t.pdf", data))
    assert text == f"Payments due this quarter:\n\n{MARKDOWN}\n\nApproved by the board."


def test_a_cell_without_its_rule_is_merged(tmp_path: Path) -> None:
    rows = [["Name", "Country", "Amount"], ["Total for all", "", "2045"]]
    text = extract_text(
        _write(tmp_path, "m.pdf", table_pdf(rows, "Before.", "After.", merge_row=1))
    )
    assert "| Name | Country | Amount |\n| --- | --- | --- |\n| Total for all |  | 2045 |" in text


def test_a_box_around_a_paragraph_is_not_a_table(tmp_path: Path) -> None:
    rows = [["A boxed note that is not a table."]]
    text = extract_text(_write(tmp_path, "box.pdf", table_pdf(rows, "Before.", "After.")))
    assert "|" not in text
    assert text == "Before.\nA boxed note that is not a table.\nAfter."


def test_columns_are_read_one_after_the_other(tmp_path: Path) -> None:
    left = ["The left column starts the", "article and explains the", "first half of the case."]
    right = ["The right column ends it", "with the second half and", "the conclusion."]
    data = two_column_pdf(left, right, title="Annual report 2025")
    raw = pypdfium2.PdfDocument(data)[0].get_textpage().get_text_range()
    assert raw.index("right column") < raw.index("left column")  # as the page draws it
    text = extract_text(_write(tmp_path, "cols.pdf", data))
    assert text == "\n".join(["Annual report 2025", *left, *right])


def test_a_single_column_page_keeps_pdfiums_text(tmp_path: Path) -> None:
    lines = ["A plain page of text,", "in one column,", "read as drawn."]
    text = extract_text(_write(tmp_path, "one.pdf", text_pdf([lines])))
    assert text == "\n".join(lines)
