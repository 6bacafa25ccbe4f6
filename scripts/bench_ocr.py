#!/usr/bin/env python3
"""Benchmark OCR: pages per minute, character error rate, and OCR's share of a batch run.

1. OCR alone: renders N pages (English, French, German at 300 dpi, light noise and skew:
   tests/batch/docgen_scans.py) and reads each with sovcli's extraction (Tesseract, one
   thread, as the batch workers run it), with --ocr-lang eng+fra+deu and with the page's
   own language; prints pages/min and the mean CER per language.
2. In a batch: the real `sovcli batch` over the scans, then over text twins of the same
   pages (.txt with the source text), same model and settings. The share of wall time spent
   in OCR is (scans - twins) / scans.
3. With --rapidocr: RapidOCR (rapidocr-onnxruntime 1.4.4, models in the wheel) on the same
   pages, one thread, for the engine comparison in docs/batch.md. Install it in a separate
   virtual environment (it pulls onnxruntime and OpenCV) and run this script from there.

Usage: python scripts/bench_ocr.py [--pages 12] [--model PATH] [--max-tokens 32]
                                   [--parallel 2] [--no-batch] [--rapidocr]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "batch"))


def make_pages(folder: Path, count: int) -> dict[str, tuple[str, str]]:
    """`count` scanned pages as PNG files; {file name: (language, source text)}."""
    from docgen_scans import TEXTS, image_bytes, render_text

    folder.mkdir(parents=True, exist_ok=True)
    langs = list(TEXTS)
    pages = {}
    for i in range(count):
        lang = langs[i % len(langs)]
        image = render_text(TEXTS[lang], seed=i, skew=0.4 + 0.1 * (i % 7))
        name = f"page{i:03d}.png"
        (folder / name).write_bytes(image_bytes(image, "PNG"))
        pages[name] = (lang, TEXTS[lang])
    return pages


def ocr_alone(folder: Path, pages: dict[str, tuple[str, str]], own_language: bool) -> dict:
    """OCR every page in this process; pages/min and mean CER per language."""
    from docgen_scans import cer

    from sovcli.batch.extract import OcrOptions, extract_document

    errors: dict[str, list[float]] = {}
    started = time.perf_counter()
    for name, (lang, source) in pages.items():
        options = OcrOptions(lang=lang if own_language else None)
        text = extract_document(folder / name, ocr=options).text
        errors.setdefault(lang, []).append(cer(source, text))
    seconds = time.perf_counter() - started
    return {
        "pages_per_min": len(pages) / seconds * 60,
        "seconds": seconds,
        "cer": {lang: statistics.mean(values) for lang, values in errors.items()},
    }


def rapidocr_alone(folder: Path, pages: dict[str, tuple[str, str]]) -> dict:
    """The same pages with RapidOCR on one thread; lines ordered top to bottom."""
    from docgen_scans import cer
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)
    errors: dict[str, list[float]] = {}
    started = time.perf_counter()
    for name, (lang, source) in pages.items():
        found, _ = engine(str(folder / name))
        found = sorted(found or [], key=lambda r: (round(r[0][0][1] / 30), r[0][0][0]))
        text = "\n".join(r[1] for r in found)
        errors.setdefault(lang, []).append(cer(source, text))
    seconds = time.perf_counter() - started
    return {
        "pages_per_min": len(pages) / seconds * 60,
        "seconds": seconds,
        "cer": {lang: statistics.mean(values) for lang, values in errors.items()},
    }


def run_batch(model: str, folder: Path, out: Path, args: argparse.Namespace) -> float:
    """One `sovcli batch` run over `folder`; the runner's own seconds (model load excluded)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    command = [
        sys.executable, "-m", "sovcli", "batch", model, str(folder), "-o", str(out),
        "--prompt", "Who is the customer in {name}? {text}", "--max-tokens",
        str(args.max_tokens), "--ctx", "1024", "--parallel", str(args.parallel), "--json",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"batch failed ({proc.returncode})")
    return float(json.loads(proc.stdout)["seconds"])


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--model", help="model reference or .gguf (default: the test model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--no-batch", action="store_true", help="only measure OCR alone")
    parser.add_argument("--rapidocr", action="store_true", help="also measure RapidOCR")
    args = parser.parse_args()
    from sovcli.batch.ocr import default_languages, find_engine

    engine = find_engine()
    if engine is None:
        raise SystemExit("Tesseract is not installed (apt-get install tesseract-ocr ...)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {engine.label}")
    with tempfile.TemporaryDirectory(prefix="bench-ocr-") as tmp:
        scans = Path(tmp) / "scans"
        pages = make_pages(scans, args.pages)
        for own in (False, True):
            result = ocr_alone(scans, pages, own)
            label = "each page's language" if own else default_languages()
            cers = ", ".join(f"{lang} {value:.2%}" for lang, value in result["cer"].items())
            print(
                f"OCR alone, --ocr-lang {label}: {len(pages)} pages in "
                f"{result['seconds']:.1f} s -> {result['pages_per_min']:.1f} pages/min; "
                f"CER {cers}",
                flush=True,
            )
        if args.rapidocr:
            result = rapidocr_alone(scans, pages)
            cers = ", ".join(f"{lang} {value:.2%}" for lang, value in result["cer"].items())
            print(
                f"RapidOCR alone: {len(pages)} pages in {result['seconds']:.1f} s -> "
                f"{result['pages_per_min']:.1f} pages/min; CER {cers}",
                flush=True,
            )
        if args.no_batch:
            return
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "scripts"))
            import fetch_test_model

            model = str(fetch_test_model.gguf_path())
        twins = Path(tmp) / "twins"
        twins.mkdir()
        for name, (_lang, source) in pages.items():
            (twins / name.replace(".png", ".txt")).write_text(source, encoding="utf-8")
        scan_s = run_batch(model, scans, Path(tmp) / "scans.jsonl", args)
        twin_s = run_batch(model, twins, Path(tmp) / "twins.jsonl", args)
        share = max(scan_s - twin_s, 0.0) / scan_s
        print(
            f"batch --parallel {args.parallel}, --max-tokens {args.max_tokens}: scans "
            f"{scan_s:.1f} s, text twins {twin_s:.1f} s -> OCR's share of wall time "
            f"{share:.0%} ({len(pages) / scan_s * 60:.1f} scanned documents/min)"
        )


if __name__ == "__main__":
    main()
