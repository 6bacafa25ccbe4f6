"""Issue 16, items 2-3: DOCX, e-mail and Outlook .msg read as a person reads them.

DOCX files are written by python-docx (headers, footers, a comment, a table with a table
nested in a cell); e-mails by the standard library; .msg files by tests/batch/docgen_msg.py,
a compound-file writer whose output extract-msg (an independent reader) also opens.
"""

from __future__ import annotations

import io
from email.message import EmailMessage
from pathlib import Path

import pytest
from batch_docgen import make_docx, make_pdf
from docgen_msg import make_msg

from sovcli.batch.extract import ExtractionError, extract_text
from sovcli.batch.markdown import markdown_table

docx = pytest.importorskip("docx", reason="python-docx writes the test documents")

ROWS = [["Name", "Country", "Amount"], ["Alice Martin", "France", "1200"]]
MARKDOWN = "| Name | Country | Amount |\n| --- | --- | --- |\n| Alice Martin | France | 1200 |"


def _kyc_docx() -> bytes:
    document = docx.Document()
    section = document.sections[0]
    section.header.paragraphs[0].text = "ACME Bank - Confidential"
    section.footer.paragraphs[0].text = "Form KYC-7 rev. 3"
    intro = document.add_paragraph("Customer due diligence for account 4471.")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([*ROWS, ["Bernd Müller", "Germany", "845"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    inner = table.cell(2, 2).add_table(rows=2, cols=2)
    for r, row in enumerate([["Q1", "400"], ["Q2", "445"]]):
        for c, value in enumerate(row):
            inner.cell(r, c).text = value
    document.add_paragraph("Reviewed by the second line.")
    document.add_comment(intro.runs, text="Check the IBAN | register.", author="Claire Dupont")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _read(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return extract_text(tmp_path / name)


def test_docx_tables_are_markdown_nested_tables_once(tmp_path: Path) -> None:
    text = _read(tmp_path, "kyc.docx", _kyc_docx())
    assert MARKDOWN + "\n| Bernd Müller | Germany | 845 Q1, 400; Q2, 445 |" in text
    assert text.count("Q1") == 1 and text.count("445") == 1  # the nested table once
    assert text.index("due diligence") < text.index("| Name") < text.index("second line")


def test_docx_headers_footers_and_comments_are_labelled(tmp_path: Path) -> None:
    text = _read(tmp_path, "kyc.docx", _kyc_docx())
    assert text.startswith("[Header]\nACME Bank - Confidential\n\nCustomer due diligence")
    assert "[Footer]\nForm KYC-7 rev. 3" in text
    assert "[Comment by Claire Dupont] Check the IBAN | register." in text
    assert text.count("ACME Bank - Confidential") == 1


def test_markdown_cells_escape_pipes_and_pad_short_rows() -> None:
    assert markdown_table([["a|b", "c"], ["d"]]) == "| a\\|b | c |\n| --- | --- |\n| d |  |"
    assert markdown_table([[""], [" "]]) == ""


# --- e-mail --------------------------------------------------------------------------------


def _message(plain: str = "") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice Martin <alice@example.org>"
    message["To"] = "claims@example.org"
    message["Subject"] = "Claim 88"
    message.set_content(plain)
    return message


def test_an_empty_text_part_does_not_hide_the_html_part(tmp_path: Path) -> None:
    message = _message("")
    message.add_alternative("<p>Please find the <b>claim</b> attached.</p>", subtype="html")
    text = _read(tmp_path, "m.eml", message.as_bytes())
    assert text.endswith("Please find the claim attached.")


def test_email_attachments_are_read_as_part_of_the_message(tmp_path: Path) -> None:
    message = _message("See the two files.")
    message.add_attachment(
        make_pdf(["Claim form 88: water damage, EUR 4,300."]),
        maintype="application", subtype="pdf", filename="claim.pdf",
    )  # fmt: skip
    message.add_attachment(
        _kyc_docx(), maintype="application", subtype="octet-stream", filename="kyc.docx"
    )
    message.add_attachment(b"MZ\x90\x00", maintype="application", subtype="x-msdownload",
                           filename="setup.exe")  # fmt: skip
    message.add_attachment(b"%PDF-1.4 broken", maintype="application", subtype="pdf",
                           filename="torn.pdf")  # fmt: skip
    forwarded = _message("The basement flooded on 1 March.")
    forwarded.replace_header("Subject", "Original report")
    message.add_attachment(forwarded)
    text = _read(tmp_path, "m.eml", message.as_bytes())
    body, _rest = text.split("\n\n[Attachment: ", 1)
    assert body.endswith("See the two files.")
    assert "[Attachment: claim.pdf]\nClaim form 88: water damage, EUR 4,300." in text
    assert "[Attachment: kyc.docx]\n[Header]" in text and MARKDOWN in text
    assert "[Attachment: setup.exe (application/x-msdownload): not read" in text
    assert "[Attachment: torn.pdf: not read: corrupt PDF" in text
    assert "[Attachment: Original report.eml]\nSubject: Original report" in text
    assert text.endswith("The basement flooded on 1 March.")


def test_messages_nested_too_deep_are_named_not_read(tmp_path: Path) -> None:
    message = _message("level 0")
    for level in range(1, 6):
        outer = _message(f"level {level}")
        outer.add_attachment(message)
        message = outer
    text = _read(tmp_path, "deep.eml", message.as_bytes())
    assert "level 5" in text and "level 3" in text
    assert "level 1" not in text
    assert "not read, messages nested more than 3 deep" in text


# --- Outlook .msg ----------------------------------------------------------------------------


def _claim_msg(**changes: object) -> bytes:
    forwarded = {
        "subject": "Original report", "sender": "Carol", "email": "carol@example.org",
        "to": "Alice", "body": "The basement flooded on 1 March.",
    }  # fmt: skip
    fields: dict = {
        "subject": "Claim 88 – Müller",
        "sender": "Alice Martin",
        "email": "alice@example.org",
        "to": "Claims Desk",
        "body": "Please see the attached form.\r\nRegards",
        "attachments": [
            ("claim.pdf", make_pdf(["Claim form 88: water damage, EUR 4,300."])),
            ("notes.docx", make_docx(["x" * 5000])),  # over 4 KB: outside the mini stream
            ("fwd.msg", forwarded),
        ],
    }
    fields.update(changes)
    return make_msg(**fields)


def test_an_outlook_msg_is_read_with_its_attachments(tmp_path: Path) -> None:
    text = _read(tmp_path, "claim.msg", _claim_msg())
    assert text.startswith(
        "Subject: Claim 88 – Müller\nFrom: Alice Martin <alice@example.org>\n"
        "To: Claims Desk\nDate: Mon, 02 Mar 2026 09:00:00 +0000\n\n"
        "Please see the attached form.\nRegards"
    )
    assert "[Attachment: claim.pdf]\nClaim form 88: water damage, EUR 4,300." in text
    assert "[Attachment: notes.docx]\n" + "x" * 5000 in text
    assert "[Attachment: fwd.msg]\nSubject: Original report\nFrom: Carol" in text
    assert text.endswith("The basement flooded on 1 March.")


def test_the_test_msg_is_a_real_msg_for_extract_msg(tmp_path: Path) -> None:
    extract_msg = pytest.importorskip("extract_msg", reason="the independent reader")
    path = tmp_path / "claim.msg"
    path.write_bytes(_claim_msg())
    message = extract_msg.openMsg(str(path))
    try:
        assert message.subject == "Claim 88 – Müller"
        assert message.body.startswith("Please see the attached form.")
        assert [a.longFilename for a in message.attachments] == [
            "claim.pdf", "notes.docx", "fwd.msg",
        ]  # fmt: skip
    finally:
        message.close()


def test_an_html_only_msg_gives_the_html_text(tmp_path: Path) -> None:
    data = _claim_msg(body=None, html="<html><body><p>Refund <b>approved</b>.</p></body></html>",
                      attachments=[])  # fmt: skip
    assert _read(tmp_path, "h.msg", data).endswith("Refund approved.")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not an ole file at all", "corrupt .msg (not an OLE2 compound file)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, "corrupt .msg"),
    ],
)
def test_broken_msg_files_get_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(ExtractionError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        _read(tmp_path, "bad.msg", data)


def test_a_truncated_msg_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    data = _claim_msg()
    for cut in (len(data) // 2, 1536, 700):
        with pytest.raises(ExtractionError, match=r"^corrupt \.msg"):
            _read(tmp_path, "cut.msg", data[:cut])
