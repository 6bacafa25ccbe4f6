"""Builders for the test folder: real minimal PDF, DOCX, e-mail and friends (no dependencies),
and the hostile ones of issue 13 (a slow PDF, a DOCX flood, an e-mail with a 50k To:)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF whose content stream draws `lines` with Helvetica (a text layer)."""
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops.append(f"({_pdf_escape(line)}) Tj T*")
    ops.append("ET")
    return pdf_with_content("\n".join(ops).encode("latin-1"))


def pdf_with_content(stream: bytes, *, deflate: bool = False) -> bytes:
    """A one-page PDF (Helvetica as /F1) whose page content stream is `stream`."""
    if deflate:
        stream = zlib.compress(stream, 9)
    flate = b" /Filter /FlateDecode" if deflate else b""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d%s >>\nstream\n" % (len(stream), flate) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_slow_pdf(operations: int = 250_000) -> bytes:
    """A ~14 KB one-page PDF whose deflated content stream holds `operations` text moves.

    Each `cm` + `Tj` pair is cheap to write and compresses to almost nothing, but pypdf's
    text extraction spends 50-75 us on it: 250,000 of them keep it busy for 12-19 s (then
    pypdf 7 gives up: too many tokens). A 2,000-page version would never end.
    """
    stream = b"BT /F1 12 Tf " + b"1 0 0 1 0 -1 cm (a) Tj " * operations + b"ET"
    return pdf_with_content(stream, deflate=True)


WORD_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def make_docx(paragraphs: list[str]) -> bytes:
    """A minimal valid .docx ([Content_Types].xml, _rels/.rels, word/document.xml)."""
    from xml.sax.saxutils import escape

    body = "".join(f"<w:p><w:r><w:t>{escape(p)}</w:t></w:r></w:p>" for p in paragraphs)
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<w:document xmlns:w="{WORD_NS}"><w:body>{body}</w:body></w:document>'
    )
    return docx_with(document.encode("utf-8"))


def docx_with(document_xml: bytes, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A .docx whose word/document.xml is exactly `document_xml` (any bytes, any encoding)."""
    import io

    content_types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", rels)
        archive.writestr("word/document.xml", document_xml)
    return buffer.getvalue()


def make_flood_docx(xml_bytes: int, seed: int = 1) -> bytes:
    """A .docx whose document.xml is `xml_bytes` of mostly empty runs, with a number now and
    then (so it compresses ~60:1, under any ratio a zip-bomb check would use). Built as an
    element tree, 60 MB of it took 1.1 GB; the file itself is ~1/60 of `xml_bytes`."""
    import random

    rnd = random.Random(seed)
    parts = [f'<w:document xmlns:w="{WORD_NS}"><w:body><w:p>'.encode()]
    size = 0
    while size < xml_bytes:
        piece = "".join(
            f"<w:r><w:t>{rnd.randrange(100)}</w:t></w:r>" if rnd.random() < 0.02 else "<w:r/>"
            for _ in range(5000)
        ).encode()
        parts.append(piece)
        size += len(piece)
    parts.append(b"</w:p></w:body></w:document>")
    return docx_with(b"".join(parts))


def hostile_email(to_pattern: str, to_chars: int = 50_000, body_lines: int = 900) -> bytes:
    """A ~100 KB e-mail whose To: header is `to_pattern` repeated to `to_chars` characters."""
    to = (to_pattern * (to_chars // len(to_pattern) + 1))[:to_chars]
    body = "The quarterly report is attached; figures are final.\n" * body_lines
    return (
        f"From: Alice <alice@example.org>\nTo: {to}\nSubject: Report\n"
        f"Date: Mon, 02 Mar 2026 09:12:00 +0100\n\n{body}"
    ).encode("ascii")


EMAIL = """From: Alice Martin <alice@example.org>
To: Support <support@example.org>
Subject: Invoice 4471 charged twice
Date: Mon, 02 Mar 2026 09:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello, my card was charged twice for invoice 4471 (EUR 120). Please refund one payment.
Alice
"""

HTML = """<!doctype html><html><head><title>Leave policy</title>
<style>body { color: red }</style><script>var secret = "do-not-extract";</script></head>
<body><h1>Leave policy</h1><p>Employees get 25 days of paid leave per year.</p>
<p>Requests go to the line manager two weeks ahead.</p></body></html>
"""


def make_corpus(root: Path, *, long_words: int = 90) -> dict[str, str]:
    """Write the test folder; returns {relative path: expected status ('ok' or 'error')}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text(
        "Meeting notes. The supplier Acme Ltd will deliver 40 laptops on 3 April.\n",
        encoding="utf-8",
    )
    (root / "readme.md").write_text(
        "# Project Falcon\n\nFalcon migrates the payroll system to the new data centre.\n",
        encoding="utf-8",
    )
    (root / "policy.html").write_text(HTML, encoding="utf-8")
    (root / "contract.pdf").write_bytes(
        make_pdf(["Service contract between Acme Ltd and Beta GmbH.", "Term: 24 months."])
    )
    sub = root / "sub"
    sub.mkdir(exist_ok=True)
    (sub / "letter.docx").write_bytes(
        make_docx(["Dear Mr Smith,", "Your loan application 8812 has been approved."])
    )
    (sub / "accounts.csv").write_text(
        "name,iban,balance\nAlice,DE89370400440532013000,1200\nBob,FR7630006000011234567890189,80\n",
        encoding="utf-8",
    )
    (sub / "ticket.eml").write_text(EMAIL, encoding="utf-8")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog garbage")
    (root / "empty.txt").write_bytes(b"")
    (root / "image.bin").write_bytes(bytes(range(256)) * 8)
    (root / "garbage.txt").write_bytes(bytes(range(256)) * 8)
    words = " ".join(f"clause{i % 97} applies to party{i % 13}." for i in range(long_words))
    (root / "long.txt").write_text("Long agreement.\n\n" + words + "\n", encoding="utf-8")
    return {
        "notes.txt": "ok",
        "readme.md": "ok",
        "policy.html": "ok",
        "contract.pdf": "ok",
        "sub/letter.docx": "ok",
        "sub/accounts.csv": "ok",
        "sub/ticket.eml": "ok",
        "broken.pdf": "error",
        "empty.txt": "error",
        "image.bin": "error",
        "garbage.txt": "error",
        "long.txt": "ok",
    }
