"""A scanned-document corpus generated with Pillow: EN/FR/DE text rendered at 300 dpi with light
noise and a slight skew, as PNG, JPEG, multi-page TIFF and image-only PDFs, a page with a
table, and a mixed PDF (a born-digital page, then a scanned one). Used by the OCR tests and
scripts/bench_ocr.py; the source text of every render is returned so CER can be measured."""

from __future__ import annotations

import io
import random
from pathlib import Path

TEXTS = {
    "eng": (
        "The applicant declares that the information given in this form is complete and "
        "correct. The bank may verify the identity documents with the issuing authority. "
        "Account number 4471-2290 was opened on 12 March 2024 at the Leeds branch. "
        "Please return the signed form within thirty days of receipt."
    ),
    "fra": (
        "Le demandeur déclare que les informations fournies dans ce formulaire sont "
        "complètes et exactes. La banque peut vérifier les pièces d'identité auprès de "
        "l'autorité émettrice. Le compte numéro 4471-2290 a été ouvert le 12 mars 2024 à "
        "l'agence de Lyon. Veuillez renvoyer le formulaire signé dans un délai de trente jours."
    ),
    "deu": (
        "Der Antragsteller erklärt, dass die in diesem Formular gemachten Angaben vollständig "
        "und richtig sind. Die Bank darf die Ausweisdokumente bei der ausstellenden Behörde "
        "prüfen. Das Konto mit der Nummer 4471-2290 wurde am 12. März 2024 in der Filiale "
        "München eröffnet. Bitte senden Sie das unterschriebene Formular binnen dreißig "
        "Tagen zurück."
    ),
}

TABLE = [
    ["Name", "Country", "Amount"],
    ["Alice Martin", "France", "1200"],
    ["Bernd Müller", "Germany", "845"],
    ["Carol Smith", "United Kingdom", "3310"],
]

DPI = 300
FONT_PX = 46  # about 11 pt at 300 dpi
PAGE_WIDTH = 2000  # pixels (a 17 cm text block)
MARGIN = 120

_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


def font(size: int = FONT_PX):  # type: ignore[no-untyped-def]
    """A TrueType font that covers French and German letters (Pillow's own as a fallback)."""
    from PIL import ImageFont

    for candidate in _FONTS:
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size=size)


def wrap(text: str, width_px: int, fnt) -> list[str]:  # type: ignore[no-untyped-def]
    """Greedy word wrap to `width_px` with `fnt`."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if fnt.getlength(trial) <= width_px:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def scan_effects(image, seed: int, skew: float = 0.8, noise: float = 0.004):  # type: ignore[no-untyped-def]
    """A slight rotation (degrees) and salt-and-pepper noise (share of pixels), like a scanner."""
    from PIL import Image

    rnd = random.Random(seed)
    image = image.rotate(skew, resample=Image.BICUBIC, expand=True, fillcolor=255)
    pixels = image.load()
    width, height = image.size
    for _ in range(int(width * height * noise)):
        x, y = rnd.randrange(width), rnd.randrange(height)
        pixels[x, y] = 0 if rnd.random() < 0.5 else 255
    return image


def render_text(text: str, seed: int = 0, skew: float = 0.8):  # type: ignore[no-untyped-def]
    """A grayscale 300-dpi 'scan' of `text` (a Pillow image)."""
    from PIL import Image, ImageDraw

    fnt = font()
    lines = [line for part in text.split("\n") for line in wrap(part, PAGE_WIDTH - 2 * MARGIN, fnt)]
    step = int(FONT_PX * 1.5)
    image = Image.new("L", (PAGE_WIDTH, 2 * MARGIN + step * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * step), line, fill=0, font=fnt)
    return scan_effects(image, seed, skew)


def render_table(rows: list[list[str]] = TABLE, seed: int = 7):  # type: ignore[no-untyped-def]
    """A ruled table, scanned: one cell per column, a header row."""
    from PIL import Image, ImageDraw

    fnt = font()
    widths = [max(int(fnt.getlength(row[c])) for row in rows) + 60 for c in range(len(rows[0]))]
    height = int(FONT_PX * 2)
    image = Image.new("L", (sum(widths) + 2 * MARGIN, height * len(rows) + 2 * MARGIN), 255)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        x = MARGIN
        y = MARGIN + r * height
        for c, cell in enumerate(row):
            draw.rectangle([x, y, x + widths[c], y + height], outline=0, width=3)
            draw.text((x + 30, y + height // 4), cell, fill=0, font=fnt)
            x += widths[c]
    return scan_effects(image, seed, skew=0.5)


def table_text(rows: list[list[str]] = TABLE) -> str:
    """The table's source text, one row per line, cells separated by spaces."""
    return "\n".join(" ".join(row) for row in rows)


def image_bytes(image, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    """`image` encoded as PNG, JPEG, TIFF or PDF (an image-only page at 300 dpi)."""
    buffer = io.BytesIO()
    options = {"dpi": (DPI, DPI)} if fmt != "PDF" else {"resolution": float(DPI)}
    if fmt == "JPEG":
        options["quality"] = 90
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def multipage(images: list, fmt: str) -> bytes:  # type: ignore[type-arg]
    """Several images as one multi-page TIFF or image-only PDF."""
    buffer = io.BytesIO()
    options = {"dpi": (DPI, DPI)} if fmt == "TIFF" else {"resolution": float(DPI)}
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def merge_pdfs(parts: list[bytes]) -> bytes:
    """The pages of several PDFs, in order, as one PDF (with pypdfium2)."""
    import pypdfium2 as pdfium

    merged = pdfium.PdfDocument.new()
    for part in parts:
        merged.import_pages(pdfium.PdfDocument(part))
    buffer = io.BytesIO()
    merged.save(buffer)
    return buffer.getvalue()


def make_scans(root: Path) -> dict[str, str]:
    """Write the OCR corpus into `root`; returns {file name: the source text it shows}."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for i, (lang, text) in enumerate(TEXTS.items()):
        image = render_text(text, seed=i, skew=0.6 + 0.3 * i)
        for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("PDF", "pdf")):
            name = f"scan_{lang}.{suffix}"
            (root / name).write_bytes(image_bytes(image, fmt))
            expected[name] = text
    pages = [render_text(TEXTS[lang], seed=10 + i) for i, lang in enumerate(TEXTS)]
    (root / "scan_all.tiff").write_bytes(multipage(pages, "TIFF"))
    expected["scan_all.tiff"] = "\n".join(TEXTS.values())
    (root / "scan_table.png").write_bytes(image_bytes(render_table(), "PNG"))
    expected["scan_table.png"] = table_text()
    return expected


def make_mixed_pdf(born_digital_lines: list[str], scanned_text: str) -> bytes:
    """A two-page PDF: page 1 has a text layer, page 2 is an image only."""
    from batch_docgen import make_pdf

    scanned = image_bytes(render_text(scanned_text, seed=21), "PDF")
    return merge_pdfs([make_pdf(born_digital_lines), scanned])


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: edit distance / reference length, whitespace runs as one space."""
    ref = " ".join(reference.split())
    hyp = " ".join(hypothesis.split())
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, rc in enumerate(ref, start=1):
        current = [i]
        for j, hc in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (rc != hc)))
        previous = current
    return previous[-1] / len(ref)


# --- born-digital PDFs with what real producers write ------------------------------------


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF file from its numbered objects (1 is the catalog, 2 the page tree)."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _stream(data: bytes) -> bytes:
    import zlib

    packed = zlib.compress(data)
    return (
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"
    )


def text_pdf(pages: list[list[str]], ligatures: bool = False) -> bytes:
    """A born-digital PDF: each page draws its lines top-down in Helvetica 11 pt.

    With `ligatures`, the font's encoding maps byte 1 to the glyph /fi and byte 2 to /fl,
    and "fi"/"fl" in the lines are drawn with them, as typesetters do.
    """
    differences = b" /Differences [1 /fi /fl]" if ligatures else b""
    to_unicode = b" /ToUnicode 4 0 R" if ligatures else b""
    font = (
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding "
        b"<< /Type /Encoding /BaseEncoding /WinAnsiEncoding"
        + differences
        + b" >>"
        + to_unicode
        + b" >>"
    )
    cmap = (  # what pdfTeX and Ghostscript write: the ligature glyphs map to U+FB01/U+FB02
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap "
        b"/CMapName /Lig def 1 begincodespacerange <00> <FF> endcodespacerange "
        b"2 beginbfchar <01> <FB01> <02> <FB02> endbfchar "
        b"1 beginbfrange <20> <7E> <0020> endbfrange endcmap "
        b"CMapName currentdict /CMap defineresource pop end end"
    )
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", font, _stream(cmap)]
    kids = []
    for lines in pages:
        ops = [b"BT /F1 11 Tf 13 TL 72 760 Td"]
        for line in lines:
            raw = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            data = raw.encode("cp1252")
            if ligatures:
                data = data.replace(b"fi", b"\x01").replace(b"fl", b"\x02")
            ops.append(b"(" + data + b") Tj T*")
        ops.append(b"ET")
        objects.append(_stream(b"\n".join(ops)))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    return _pdf(objects)


def scan_with_text_layer(image, hidden: str) -> bytes:  # type: ignore[no-untyped-def]
    """A one-page PDF showing `image` (a grayscale scan) with an invisible text layer
    `hidden` over it (render mode 3), as a broken OCR tool or a font without a Unicode
    map leaves: the layer says one thing, the page shows another."""
    width, height = image.size
    pts_w, pts_h = width * 72 / DPI, height * 72 / DPI
    raw = hidden.encode("cp1252", "replace").replace(b"\\", b"\\\\")
    raw = raw.replace(b"(", b"\\(").replace(b")", b"\\)")
    content = b"q %.2f 0 0 %.2f 0 0 cm /Im1 Do Q BT 3 Tr /F1 10 Tf 20 %.2f Td (%s) Tj ET" % (
        pts_w,
        pts_h,
        pts_h - 30,
        raw,
    )
    import zlib

    pixels = zlib.compress(image.tobytes())
    image_object = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length %d /Filter /FlateDecode >>\nstream\n"
        % (width, height, len(pixels))
        + pixels
        + b"\nendstream"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Resources << /Font "
        b"<< /F1 4 0 R >> /XObject << /Im1 5 0 R >> >> /Contents 6 0 R >>" % (pts_w, pts_h),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        image_object,
        _stream(content),
    ]
    return _pdf(objects)


def table_pdf(
    rows: list[list[str]], before: str, after: str, style: str = "lines", merge_row: int = -1
) -> bytes:
    """A born-digital page: a paragraph, a ruled table of `rows`, a paragraph.

    `style` "lines": the rules are one stroked path of move/line pairs (as Word writes them);
    "rects": thin filled rectangles, one path each (as LaTeX writes them). Row `merge_row`
    has no rule between its first two cells (a merged cell holding rows[merge_row][0]).
    """
    widths = [150.0] * len(rows[0])
    height = 22.0
    left, top = 72.0, 640.0
    xs = [left + sum(widths[:i]) for i in range(len(widths) + 1)]
    ys = [top - i * height for i in range(len(rows) + 1)]
    rules: list[tuple[float, float, float, float]] = [(xs[0], y, xs[-1], y) for y in ys]
    for i, x in enumerate(xs):
        for r in range(len(rows)):
            if i == 1 and r == merge_row:
                continue
            rules.append((x, ys[r], x, ys[r + 1]))
    if style == "lines":
        path = b" ".join(b"%.1f %.1f m %.1f %.1f l" % rule for rule in rules) + b" S"
    else:
        path = b"\n".join(
            b"%.1f %.1f %.1f %.1f re f"
            % (min(x0, x1) - 0.3, min(y0, y1) - 0.3, abs(x1 - x0) + 0.6, abs(y1 - y0) + 0.6)
            for x0, y0, x1, y1 in rules
        )
    ops = [b"0.6 w", path, b"BT /F1 11 Tf"]

    def text_at(x: float, y: float, text: str) -> None:
        raw = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(b"1 0 0 1 %.1f %.1f Tm (%s) Tj" % (x, y, raw.encode("cp1252")))

    text_at(left, top + 40, before)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell:
                text_at(xs[c] + 6, ys[r] - 15, cell)
    text_at(left, ys[-1] - 40, after)
    ops.append(b"ET")
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        font,
        _stream(b"\n".join(ops)),
    ]
    return _pdf(objects)


def two_column_pdf(left: list[str], right: list[str], title: str = "") -> bytes:
    """A page in two columns whose content stream draws the right column first (as some
    layout programs do), under an optional full-width title."""
    ops = [b"BT /F1 11 Tf"]

    def text_at(x: float, y: float, text: str) -> None:
        raw = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(b"1 0 0 1 %.1f %.1f Tm (%s) Tj" % (x, y, raw.encode("cp1252")))

    for i, line in enumerate(right):
        text_at(320, 680 - 14 * i, line)
    for i, line in enumerate(left):
        text_at(72, 680 - 14 * i, line)
    if title:
        text_at(72, 720, title)
    ops.append(b"ET")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        _stream(b"\n".join(ops)),
    ]
    return _pdf(objects)
