"""PDF text: recall of pypdf and of sovcli's PDFium reader against poppler's pdftotext.

Usage: python scripts/bench_pdf_text.py FILE.pdf [...]
Recall = the share of pdftotext's words (as a multiset; NFKC, hyphens at line ends joined
for both) that the reader also gives; "as is" = pypdf's words without that normalisation
(what a prompt got before); also seconds per file. Real PDFs, e.g. from Debian:
  apt-get download r-doc-pdf ghostscript-doc && dpkg -x r-doc-pdf_*.deb x && dpkg -x ...
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path


def words(text: str) -> Counter[str]:
    """Words as a multiset, after NFKC and joining hyphens at line ends."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)
    return Counter(re.findall(r"\w+", text.lower()))


def raw_words(text: str) -> Counter[str]:
    """Words as a reader gives them, without NFKC or joining (ligatures and hyphens left)."""
    return Counter(re.findall(r"\w+", text.lower()))


def recall(reference: Counter[str], candidate: Counter[str]) -> float:
    total = sum(reference.values())
    return sum((reference & candidate).values()) / total if total else 1.0


def pdftotext(path: Path) -> str:
    done = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True)
    return done.stdout.decode("utf-8", "replace")


def pypdf_text(path: Path) -> str:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(path.read_bytes()), strict=False)
    return "\n\n".join(page.extract_text() or "" for page in reader.pages)


def sovcli_text(path: Path) -> str:
    from sovcli.batch.extract import OcrOptions
    from sovcli.batch.paged import pdf_document

    return pdf_document(path.read_bytes(), OcrOptions(mode="never")).text


def pdfium_pages(path: Path) -> str:
    """PDFium's page texts as sovcli repairs them, running headers/footers kept."""
    from sovcli.batch.pdf_text import open_pdf, read_pages

    return "\n\n".join(page.text for page in read_pages(open_pdf(path.read_bytes())))


def exact_ligatures(text: str) -> int:
    return len(re.findall("[\ufb00-\ufb06]", text))


def main(paths: list[str]) -> None:
    print(
        "file | pages | pdftotext words | pypdf recall as is | pypdf recall | s "
        "| PDFium recall | s | sovcli recall (running lines dropped) | s | U+FB0x left"
    )
    for name in paths:
        path = Path(name)
        reference = words(pdftotext(path))
        row = [path.name, "", str(sum(reference.values()))]
        row.append(f"{recall(reference, raw_words(pypdf_text(path))):.3f}")
        for reader in (pypdf_text, pdfium_pages, sovcli_text):
            started = time.perf_counter()
            text = reader(path)
            seconds = time.perf_counter() - started
            row += [f"{recall(reference, words(text)):.3f}", f"{seconds:.1f}"]
        row.append(
            f"pypdf {exact_ligatures(pypdf_text(path))} / sovcli "
            f"{exact_ligatures(sovcli_text(path))}"
        )
        import pypdfium2

        row[1] = str(len(pypdfium2.PdfDocument(str(path))))
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
