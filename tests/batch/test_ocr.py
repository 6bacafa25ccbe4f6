"""Issue 16, item 1: OCR on the CPU, offline (Tesseract with the eng, fra and deu packs).

The corpus is rendered here (tests/batch/docgen_scans.py): text in English, French and
German at 300 dpi with light noise and a slight skew, saved as PNG, JPEG, image-only PDF and
a three-page TIFF, a ruled table, a mixed PDF (a born-digital page, then a scanned one) and
a scan under a garbage text layer. The character error rate against the source text is
asserted per language. Without Tesseract, scans get the status needs_ocr and a hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docgen_scans import (
    TABLE,
    TEXTS,
    cer,
    image_bytes,
    make_mixed_pdf,
    make_scans,
    render_text,
    scan_with_text_layer,
)
from fake_endpoint import serve

from sovcli.batch.extract import NeedsOCR, OcrOptions, extract_document
from sovcli.batch.isolate import ExtractOptions, extract_isolated_document
from sovcli.batch.ocr import find_engine, installed_languages

MAX_CER = 0.05
needs_tesseract = pytest.mark.skipif(
    find_engine() is None or not {"eng", "fra", "deu"} <= installed_languages(),
    reason="Tesseract with the eng, fra and deu packs is not installed "
    "(apt-get install tesseract-ocr tesseract-ocr-fra tesseract-ocr-deu)",
)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("scans")
    return root, make_scans(root)


@needs_tesseract
@pytest.mark.slow  # about a second of OCR per page
@pytest.mark.parametrize("lang", ["eng", "fra", "deu"])
@pytest.mark.parametrize("suffix", ["png", "jpg", "pdf"])
def test_character_error_rate_per_language(scans, lang: str, suffix: str) -> None:
    root, expected = scans
    name = f"scan_{lang}.{suffix}"
    result = extract_isolated_document(root / name, ExtractOptions())  # in the worker
    assert cer(expected[name], result.text) <= MAX_CER, result.text
    assert result.ocr_pages == [1]
    assert result.ocr_engine == f"tesseract {find_engine().version}"
    assert result.ocr_lang == "eng+fra+deu"


@needs_tesseract
@pytest.mark.slow
def test_a_multipage_tiff_names_every_page(scans) -> None:
    root, expected = scans
    result = extract_document(root / "scan_all.tiff")
    assert result.ocr_pages == [1, 2, 3]
    assert cer(expected["scan_all.tiff"], result.text) <= MAX_CER
    paragraphs = result.text.split("\n\n")
    assert "Der Antragsteller" in paragraphs[-1]  # the pages in order


@needs_tesseract
@pytest.mark.slow
def test_a_scanned_table_keeps_its_cells_in_reading_order(scans) -> None:
    root, _ = scans
    text = extract_document(root / "scan_table.png").text
    lines = [" ".join(line.replace("|", " ").split()) for line in text.splitlines() if line]
    rows = [" ".join(row) for row in TABLE]
    assert len(lines) == len(rows)  # one line per row, cells in order
    assert cer("\n".join(rows), "\n".join(lines)) <= MAX_CER  # ruling lines read as | left out
    assert lines[0] == "Name Country Amount" and lines[3].endswith("3310")


@needs_tesseract
@pytest.mark.slow
def test_a_mixed_pdf_ocrs_only_its_scanned_page(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pdf"
    path.write_bytes(make_mixed_pdf(["Page one has a text layer."], TEXTS["fra"]))
    result = extract_document(path)
    assert result.ocr_pages == [2]
    first, second = result.text.split("\n\n", 1)
    assert first == "Page one has a text layer."
    assert cer(TEXTS["fra"], second) <= MAX_CER
    always = extract_document(path, ocr=OcrOptions(mode="always"))
    assert always.ocr_pages == [1, 2]
    assert "Page one has a text layer." in always.text


@needs_tesseract
@pytest.mark.slow
def test_a_garbage_text_layer_is_replaced_by_ocr(tmp_path: Path) -> None:
    path = tmp_path / "bad-layer.pdf"
    path.write_bytes(scan_with_text_layer(render_text(TEXTS["deu"]), "#$%&'()*+,-./#$%&'()*+,"))
    result = extract_document(path)
    assert result.ocr_pages == [1]
    assert cer(TEXTS["deu"], result.text) <= MAX_CER
    assert "#$%" not in result.text


@needs_tesseract
@pytest.mark.slow
def test_ocr_lang_is_used(scans) -> None:
    root, expected = scans
    result = extract_document(root / "scan_fra.png", ocr=OcrOptions(lang="fra"))
    assert result.ocr_lang == "fra"
    assert cer(expected["scan_fra.png"], result.text) <= MAX_CER


def test_ocr_never_gives_needs_ocr_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(image_bytes(render_text("Short text."), "PNG"))
    with pytest.raises(NeedsOCR, match=r"--ocr never.*--ocr auto --retry-failed"):
        extract_document(path, ocr=OcrOptions(mode="never"))


def test_a_file_that_is_not_an_image_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"GIF89a not really a jpeg")
    with pytest.raises(Exception, match=r"^corrupt image"):
        extract_document(path)


# --- through the command line ------------------------------------------------------------


def _echo(payload: dict) -> str:
    return payload["messages"][-1]["content"]


def _batch(docs: Path, out: Path, url: str, *extra: str, path: str | None = None):
    env = dict(os.environ, SOVCLI_NO_PROGRESS="1")
    if path is not None:
        env["PATH"] = path
    command = [sys.executable, "-m", "sovcli", "batch", "m", str(docs), "-o", str(out)]
    command += ["-p", "{text}", "--endpoint", url, "--parallel", "2", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def _records(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, out.read_text("utf-8").splitlines())}


def _scan_folder(docs: Path) -> None:
    docs.mkdir()
    image = render_text(TEXTS["eng"])
    (docs / "scan.png").write_bytes(image_bytes(image, "PNG"))
    (docs / "scan.pdf").write_bytes(image_bytes(image, "PDF"))
    (docs / "mixed.pdf").write_bytes(make_mixed_pdf(["Typed page."], TEXTS["eng"]))
    (docs / "note.txt").write_text("A typed note.")


def test_without_tesseract_scans_get_needs_ocr_and_a_hint(tmp_path: Path) -> None:
    docs, out = tmp_path / "docs", tmp_path / "out.jsonl"
    _scan_folder(docs)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()  # a PATH where no tesseract is found
    with serve(_echo) as endpoint:
        done = _batch(docs, out, endpoint.url, path=str(empty_bin))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    records = _records(out)
    assert {p: r["status"] for p, r in records.items()} == {
        "scan.png": "needs_ocr",
        "scan.pdf": "needs_ocr",
        "mixed.pdf": "needs_ocr",
        "note.txt": "ok",
    }
    assert records["mixed.pdf"]["error"].startswith(
        "no usable text layer on page 2 of this PDF and no OCR engine is installed: "
        "install Tesseract: apt-get install tesseract-ocr tesseract-ocr-fra tesseract-ocr-deu"
    )
    assert records["scan.png"]["error"].startswith(
        "an image has no text layer and no OCR engine is installed: install Tesseract"
    )
    for name in ("scan.png", "scan.pdf", "mixed.pdf"):
        assert "apt-get install tesseract-ocr" in records[name]["error"]
        assert records[name]["output"] is None  # never an empty text sent as if it were one
    assert b"Typed page." not in endpoint.bodies()  # a half-read PDF is not sent either


@needs_tesseract
@pytest.mark.slow
def test_batch_records_the_ocr_pages_engine_and_languages(tmp_path: Path) -> None:
    docs, out = tmp_path / "docs", tmp_path / "out.jsonl"
    _scan_folder(docs)
    with serve(_echo) as endpoint:
        done = _batch(docs, out, endpoint.url, "--ocr-lang", "eng+deu")
    assert done.returncode == 0, done.stderr
    records = _records(out)
    assert {p: r["status"] for p, r in records.items()} == dict.fromkeys(records, "ok")
    engine = f"tesseract {find_engine().version}"
    assert records["scan.png"]["ocr_pages"] == [1]
    assert records["mixed.pdf"]["ocr_pages"] == [2]
    for name in ("scan.png", "scan.pdf", "mixed.pdf"):
        assert records[name]["ocr_engine"] == engine
        assert records[name]["ocr_lang"] == "eng+deu"
        assert cer(TEXTS["eng"], records[name]["output"].split("Typed page.")[-1]) <= MAX_CER
    assert "ocr_pages" not in records["note.txt"]


def test_ocr_options_are_checked() -> None:
    from sovcli.batch.isolate import extract_options
    from sovcli.errors import UsageError

    with pytest.raises(UsageError, match=r"--ocr must be one of auto, always, never"):
        extract_options(ocr="sometimes")
    with pytest.raises(UsageError, match=r"is not a list of Tesseract languages"):
        extract_options(ocr_lang="eng;rm -rf /")
    if find_engine() is not None:
        with pytest.raises(
            UsageError, match=r"no language pack for klingon .*tesseract-ocr-klingon"
        ):
            extract_options(ocr_lang="eng+klingon")
    assert extract_options(ocr="never", ocr_lang="eng").ocr_options == OcrOptions("never", "eng")


@pytest.mark.slow  # three runs of the command
def test_unknown_ocr_options_are_refused_before_any_work(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello")
    out = tmp_path / "o.jsonl"
    done = _batch(docs, out, "http://127.0.0.1:9", "--ocr", "sometimes")
    assert done.returncode == 2
    assert "--ocr must be one of auto, always, never (got 'sometimes')" in done.stderr
    if find_engine() is not None:
        done = _batch(docs, out, "http://127.0.0.1:9", "--ocr-lang", "eng+klingon")
        assert done.returncode == 2
        assert "--ocr-lang: Tesseract has no language pack for klingon" in done.stderr
        assert "tesseract-ocr-klingon" in done.stderr
    done = _batch(docs, out, "http://127.0.0.1:9", "--ocr-lang", "eng;rm -rf /")
    assert done.returncode == 2
    assert "is not a list of Tesseract languages" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


@needs_tesseract
@pytest.mark.slow
def test_each_ocr_page_is_reported_so_the_time_limit_is_per_page(tmp_path: Path) -> None:
    """The worker sends a heartbeat per OCR'd page; the parent then restarts the limit."""
    from docgen_scans import multipage

    from sovcli.batch import ocr

    pages = [render_text(f"Page {n} of the scanned contract.", seed=n) for n in range(3)]
    path = tmp_path / "contract.pdf"
    path.write_bytes(multipage(pages, "PDF"))
    seen: list[int] = []
    ocr.set_page_hook(lambda: seen.append(1))
    try:
        result = extract_document(path)
    finally:
        ocr.set_page_hook(None)
    assert len(seen) == 3 and result.ocr_pages == [1, 2, 3]
    isolated = extract_isolated_document(path, ExtractOptions())  # heartbeats are not text
    assert isolated.text == result.text and isolated.ocr_pages == [1, 2, 3]


@needs_tesseract
def test_a_scan_of_too_many_pages_is_too_large(tmp_path: Path, monkeypatch) -> None:
    from docgen_scans import multipage

    from sovcli.batch import ocr

    monkeypatch.setattr(ocr, "MAX_OCR_PAGES", 1)
    path = tmp_path / "two.pdf"
    path.write_bytes(multipage([render_text("One."), render_text("Two.")], "PDF"))
    with pytest.raises(Exception, match=r"^too large: 2 pages need OCR \(at most 1\)$"):
        extract_document(path)


def _running_tesseracts() -> list[str]:
    done = subprocess.run(["ps", "-C", "tesseract", "-o", "pid=,stat="], capture_output=True)
    return [line for line in done.stdout.decode().splitlines() if "Z" not in line.split()[-1]]


@needs_tesseract
@pytest.mark.slow
def test_a_scan_over_its_time_limit_stops_its_ocr_too(tmp_path: Path) -> None:
    """A 30-page TIFF is one Tesseract call: at the time limit the worker is killed, and
    Tesseract with it (PR_SET_PDEATHSIG), not left reading pages for nobody."""
    import time

    from docgen_scans import multipage

    from sovcli.batch.isolate import ExtractorPool

    path = tmp_path / "long.tiff"
    path.write_bytes(multipage([render_text(TEXTS["eng"], seed=n) for n in range(30)], "TIFF"))
    pool = ExtractorPool(max_workers=1)
    try:
        with pytest.raises(Exception, match=r"^timeout: extraction took longer than 2 s"):
            pool.extract(path, ExtractOptions(timeout=2.0))
    finally:
        pool.close()
    deadline = time.monotonic() + 10
    while _running_tesseracts() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running_tesseracts() == []
