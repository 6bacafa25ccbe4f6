"""Issue 16, Must show: a mixed folder through `sovcli batch` - born-digital, scanned and
mixed PDFs, images, a DOCX with a table, e-mail and Outlook messages with attachments, and
broken files. Every document is recorded exactly once with the right status, the table
reaches the prompt as a Markdown table, and a re-run records nothing again. Then the real
model: a `--schema` extraction of a scanned form gives the key fields of its born-digital
twin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from batch_docgen import make_pdf
from docgen_msg import make_msg
from docgen_scans import (
    TEXTS,
    cer,
    image_bytes,
    make_mixed_pdf,
    multipage,
    render_text,
    table_pdf,
    text_pdf,
)
from fake_endpoint import serve

from sovcli.batch.ocr import find_engine, installed_languages

pytestmark = [
    pytest.mark.slow,  # OCR of a few pages, and the real model
    pytest.mark.skipif(
        find_engine() is None or not {"eng", "fra", "deu"} <= installed_languages(),
        reason="Tesseract with the eng, fra and deu packs is not installed",
    ),
]
ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = "| Name | Country | Amount |\n| --- | --- | --- |\n| Alice Martin | France | 1200 |"


def _docx_with_table() -> bytes:
    import io

    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_paragraph("Payments due this quarter:")
    table = document.add_table(rows=2, cols=3)
    for r, row in enumerate([["Name", "Country", "Amount"], ["Alice Martin", "France", "1200"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _mail() -> bytes:
    message = EmailMessage()
    message["From"] = "Alice Martin <alice@example.org>"
    message["Subject"] = "Scanned ID"
    message.set_content("")
    message.add_alternative("<p>My ID card is attached.</p>", subtype="html")
    scan = image_bytes(render_text(TEXTS["fra"], seed=5), "PNG")
    message.add_attachment(scan, maintype="image", subtype="png", filename="id-card.png")
    return message.as_bytes()


def _folder(docs: Path) -> dict[str, str]:
    """The mixed folder; returns {path: expected status}."""
    docs.mkdir()
    (docs / "born.pdf").write_bytes(text_pdf([["Contract 77 between Acme Ltd and Beta GmbH."]]))
    (docs / "scanned.pdf").write_bytes(image_bytes(render_text(TEXTS["deu"]), "PDF"))
    (docs / "mixed.pdf").write_bytes(make_mixed_pdf(["Typed cover page."], TEXTS["eng"]))
    (docs / "photo.jpg").write_bytes(image_bytes(render_text(TEXTS["fra"], seed=3), "JPEG"))
    pages = [render_text(TEXTS["eng"], seed=8), render_text(TEXTS["deu"], seed=9)]
    (docs / "fax.tiff").write_bytes(multipage(pages, "TIFF"))
    (docs / "payments.docx").write_bytes(_docx_with_table())
    rows = [["Name", "Country", "Amount"], ["Alice Martin", "France", "1200"]]
    (docs / "ledger.pdf").write_bytes(table_pdf(rows, "Ledger extract:", "End of extract."))
    (docs / "id.eml").write_bytes(_mail())
    form = [("form.pdf", make_pdf(["Claim form 88."]))]
    claim = make_msg("Claim 88", "Alice", "a@example.org", "Claims", "Form attached.", None, form)
    (docs / "claim.msg").write_bytes(claim)
    (docs / "note.txt").write_text("A typed note.", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog garbage")
    (docs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (docs / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (docs / "broken.msg").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x01" * 300)
    (docs / "blank.pdf").write_bytes(make_pdf([]))
    statuses = dict.fromkeys(
        ["born.pdf", "scanned.pdf", "mixed.pdf", "photo.jpg", "fax.tiff", "payments.docx",
         "ledger.pdf", "id.eml", "claim.msg", "note.txt"], "ok",
    )  # fmt: skip
    statuses.update(dict.fromkeys(["broken.pdf", "broken.png", "broken.docx", "broken.msg",
                                   "blank.pdf"], "error"))  # fmt: skip
    return statuses


def _echo(payload: dict) -> str:
    return payload["messages"][-1]["content"]


def _sovcli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOVCLI_NO_PROGRESS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "sovcli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text("utf-8").splitlines()]


def test_a_mixed_folder_every_document_once_with_the_right_status(tmp_path: Path) -> None:
    docs, out = tmp_path / "docs", tmp_path / "out.jsonl"
    expected = _folder(docs)
    with serve(_echo) as endpoint:
        done = _sovcli("batch", "m", str(docs), "-o", str(out), "-p", "{text}",
                       "--endpoint", endpoint.url, "--parallel", "3")  # fmt: skip
        assert done.returncode == 1, done.stderr  # the broken files failed
        assert "Traceback" not in done.stderr
        records = _records(out)
        assert sorted(r["path"] for r in records) == sorted(expected)  # each exactly once
        by_path = {r["path"]: r for r in records}
        assert {p: r["status"] for p, r in by_path.items()} == expected
        again = _sovcli("batch", "m", str(docs), "-o", str(out), "-p", "{text}",
                        "--endpoint", endpoint.url)  # fmt: skip
        assert again.returncode == 1 and len(_records(out)) == len(expected)  # nothing redone
        sent = endpoint.bodies().decode("utf-8")
    assert json.dumps(MARKDOWN)[1:-1] in sent  # the table reached the prompt as Markdown
    assert by_path["payments.docx"]["output"].endswith(MARKDOWN)
    assert by_path["ledger.pdf"]["output"] == f"Ledger extract:\n\n{MARKDOWN}\n\nEnd of extract."
    assert by_path["born.pdf"]["output"] == "Contract 77 between Acme Ltd and Beta GmbH."
    assert "ocr_pages" not in by_path["born.pdf"]
    assert by_path["mixed.pdf"]["ocr_pages"] == [2]
    assert by_path["fax.tiff"]["ocr_pages"] == [1, 2]
    for name, lang in (("scanned.pdf", "deu"), ("photo.jpg", "fra")):
        assert by_path[name]["ocr_pages"] == [1]
        assert cer(TEXTS[lang], by_path[name]["output"]) <= 0.05
    assert by_path["id.eml"]["output"].startswith("Subject: Scanned ID\nFrom: Alice Martin")
    assert (
        "My ID card is attached.\n\n[Attachment: id-card.png, OCR by tesseract"
        in (by_path["id.eml"]["output"])
    )
    assert "[Attachment: form.pdf]\nClaim form 88." in by_path["claim.msg"]["output"]
    assert by_path["broken.pdf"]["error"].startswith("corrupt PDF")
    assert by_path["broken.png"]["error"].startswith("corrupt or unreadable image: OCR failed")
    assert by_path["broken.docx"]["error"].startswith("corrupt DOCX")
    assert by_path["broken.msg"]["error"].startswith("corrupt .msg")
    assert by_path["blank.pdf"]["error"] == "no extractable text (scanned?)"


FORM = "Customer: Alice Martin\nCountry: France\nAccount: 4471-2290"
SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 20},
        "account": {"type": "string", "maxLength": 20},
    },
    "required": ["customer", "country", "account"],
    "additionalProperties": False,
}


def test_a_scanned_form_gives_the_fields_of_its_born_digital_twin(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    docs = tmp_path / "forms"
    docs.mkdir()
    (docs / "form-typed.pdf").write_bytes(text_pdf([FORM.split("\n")]))
    (docs / "form-scanned.png").write_bytes(image_bytes(render_text(FORM, seed=4), "PNG"))
    schema = tmp_path / "kyc.schema.json"
    schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
    out = tmp_path / "kyc.jsonl"
    done = _sovcli(
        "batch", str(smollm2_gguf), str(docs), "-o", str(out), "--schema", str(schema),
        "--prompt", "Extract customer, country and account as JSON from this form: {text}",
        "--ctx", "512", "--max-tokens", "60", "--parallel", "1", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = {r["path"]: r for r in _records(out)}
    scanned, typed = records["form-scanned.png"], records["form-typed.pdf"]
    assert scanned["ocr_pages"] == [1] and "ocr_pages" not in typed
    assert scanned["output"] == typed["output"]  # the same key fields
    assert scanned["output"]["customer"] == typed["output"]["customer"]
