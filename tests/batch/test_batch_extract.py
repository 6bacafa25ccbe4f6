"""Text extraction per document type, and the per-document reasons for what cannot be read."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from batch_docgen import make_corpus, make_docx, make_pdf

from sovcli.batch.extract import ExtractionError, extract_text


def test_every_supported_type_yields_its_text(tmp_path: Path) -> None:
    expected = make_corpus(tmp_path / "docs")
    texts = {}
    for rel, status in expected.items():
        if status == "ok":
            texts[rel] = extract_text(tmp_path / "docs" / rel)
    assert "40 laptops" in texts["notes.txt"]
    assert "Project Falcon" in texts["readme.md"]
    assert "25 days of paid leave" in texts["policy.html"]
    assert "do-not-extract" not in texts["policy.html"]  # script dropped
    assert "color: red" not in texts["policy.html"]  # style dropped
    assert "Service contract between Acme Ltd and Beta GmbH." in texts["contract.pdf"]
    assert "Term: 24 months." in texts["contract.pdf"]
    assert "loan application 8812 has been approved" in texts["sub/letter.docx"]
    assert "Alice | DE89370400440532013000 | 1200" in texts["sub/accounts.csv"]
    email = texts["sub/ticket.eml"]
    assert "Subject: Invoice 4471 charged twice" in email
    assert "From: Alice Martin <alice@example.org>" in email
    assert "charged twice for invoice 4471" in email


def test_handwritten_pdf_is_a_real_pdf_for_pypdf() -> None:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(make_pdf(["Hello (PDF) world"])))
    assert len(reader.pages) == 1
    assert reader.pages[0].extract_text().strip() == "Hello (PDF) world"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog garbage", "corrupt PDF"),
        ("fake.pdf", b"this is not a pdf at all", "corrupt PDF"),
        ("empty.md", b"", "empty file"),
        ("blank.txt", b"  \n\n \t\n", "empty document"),
        ("blob.bin", bytes(range(256)), "unsupported file type .bin"),
        ("noext", b"hello", "unsupported file type (no extension)"),
        ("garbage.txt", bytes(range(256)) * 4, "binary content"),
        ("fake.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX"),
        ("junk.eml", b"\x00\x01\x02" * 100, "binary content"),
    ],
)
def test_unreadable_documents_get_a_reason(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ExtractionError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        extract_text(path)


def test_encrypted_and_scanned_pdfs(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append_pages_from_reader(PdfReader(io.BytesIO(make_pdf(["Top secret"]))))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    (tmp_path / "locked.pdf").write_bytes(buffer.getvalue())
    with pytest.raises(ExtractionError, match="encrypted PDF"):
        extract_text(tmp_path / "locked.pdf")

    scanned = PdfWriter()
    scanned.add_blank_page(612, 792)  # a page with no text layer, like a scan
    buffer = io.BytesIO()
    scanned.write(buffer)
    (tmp_path / "scan.pdf").write_bytes(buffer.getvalue())
    with pytest.raises(ExtractionError, match=r"no extractable text \(scanned\?\)"):
        extract_text(tmp_path / "scan.pdf")


def _docx_with(document_xml: bytes, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", document_xml)
    return buffer.getvalue()


def test_docx_entity_tricks_are_refused(tmp_path: Path) -> None:
    billion_laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        b"<w:body><w:p><w:r><w:t>&lol2;</w:t></w:r></w:p></w:body></w:document>"
    )
    (tmp_path / "lol.docx").write_bytes(_docx_with(billion_laughs))
    with pytest.raises(ExtractionError, match="DOCTYPE/ENTITY"):
        extract_text(tmp_path / "lol.docx")


def test_docx_zip_bomb_is_refused(tmp_path: Path) -> None:
    huge = b"<w:document>" + b" " * (80 * 1024 * 1024) + b"</w:document>"
    (tmp_path / "bomb.docx").write_bytes(_docx_with(huge))
    assert (tmp_path / "bomb.docx").stat().st_size < 1024 * 1024
    with pytest.raises(ExtractionError, match="zip bomb"):
        extract_text(tmp_path / "bomb.docx")


def test_docx_tables_and_breaks(tmp_path: Path) -> None:
    ns = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    xml = (
        f'<w:document xmlns:w="{ns}"><w:body>'
        "<w:p><w:r><w:t>Line one</w:t><w:br/><w:t>Line two</w:t></w:r></w:p>"
        "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Name</w:t></w:r></w:p></w:tc>"
        "<w:tc><w:p><w:r><w:t>IBAN</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"
        "</w:body></w:document>"
    ).encode()
    (tmp_path / "t.docx").write_bytes(_docx_with(xml))
    assert extract_text(tmp_path / "t.docx") == "Line one\nLine two\nName\tIBAN"
    (tmp_path / "simple.docx").write_bytes(make_docx(["A", "B"]))
    assert extract_text(tmp_path / "simple.docx") == "A\nB"


def test_email_html_only_body_falls_back_to_html(tmp_path: Path) -> None:
    message = (
        "From: bank@example.org\nSubject: Statement\nMIME-Version: 1.0\n"
        'Content-Type: text/html; charset="utf-8"\n\n'
        "<html><body><p>Your balance is <b>EUR 42</b>.</p><script>x()</script></body></html>\n"
    )
    (tmp_path / "m.eml").write_text(message, encoding="utf-8")
    text = extract_text(tmp_path / "m.eml")
    assert "Subject: Statement" in text
    assert "Your balance is EUR 42." in text
    assert "x()" not in text


def test_latin1_text_is_decoded(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_bytes("Société Générale, Zürich".encode("cp1252"))
    assert extract_text(tmp_path / "l.txt") == "Société Générale, Zürich"
