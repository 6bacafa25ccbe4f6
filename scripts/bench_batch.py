#!/usr/bin/env python3
"""Benchmark `sovcli batch`: documents per minute and generated tokens/s, --parallel 1 vs N.

Generates one folder of short documents, then runs the real command (`python -m sovcli batch
... --json`) on it once per parallelism level, each into a fresh results file, in the same
run on the same machine. Times are the runner's own (model load excluded); the ratio of the
parallel run to the --parallel 1 baseline is what to quote.

Usage: python scripts/bench_batch.py [--model PATH] [--docs 24] [--max-tokens 48]
                                     [--parallel 1 8] [--ctx 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TOPICS = [
    "the quarterly audit of the Lyon branch",
    "a late payment by a supplier of office chairs",
    "the renewal of the cloud hosting contract",
    "a customer complaint about a double card charge",
    "the new travel expense policy",
    "a data-protection request from a former employee",
    "the migration of the payroll system",
    "the annual fire safety inspection",
]


def make_folder(root: Path, count: int) -> None:
    """`count` short memos of a few sentences each (same folder for every run)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        text = (
            f"Memo {i}. Subject: {topic}.\n\n"
            f"The team met on day {i + 1} to discuss {topic}. Three actions were agreed: "
            f"collect the documents, inform the managers, and report back within {i % 5 + 2} "
            "weeks. The budget impact is expected to be small.\n"
        )
        (root / f"memo{i:03d}.txt").write_text(text, encoding="utf-8")


def run_batch(model: str, folder: Path, out: Path, parallel: int, args: argparse.Namespace) -> dict:
    """One `sovcli batch` run; returns its JSON summary plus wall time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    command = [
        sys.executable, "-m", "sovcli", "batch", model, str(folder), "-o", str(out),
        "--prompt", "Summarise {name} in two sentences: {text}",
        "--max-tokens", str(args.max_tokens), "--ctx", str(args.ctx),
        "--parallel", str(parallel), "--json",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"batch --parallel {parallel} failed ({proc.returncode})")
    summary = json.loads(proc.stdout)
    summary["wall_s"] = wall
    return summary


def main() -> None:
    """Run the benchmark and print a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model reference or .gguf (default: the test model)")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import fetch_test_model

        model = str(fetch_test_model.gguf_path())
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp) / "docs"
        make_folder(folder, args.docs)
        results = {}
        for parallel in args.parallel:
            out = Path(tmp) / f"results-p{parallel}.jsonl"
            summary = run_batch(model, folder, out, parallel, args)
            results[parallel] = summary
            docs_per_min = summary["processed"] / summary["seconds"] * 60
            print(
                f"--parallel {parallel:>2}: {summary['processed']} docs"
                f" in {summary['seconds']:.1f} s"
                f" -> {docs_per_min:.1f} docs/min, {summary['completion_tokens']} tokens generated"
                f" -> {summary['completion_tokens_per_s']:.1f} tok/s"
                f" (wall incl. model load {summary['wall_s']:.1f} s)",
                flush=True,
            )
    base = results[args.parallel[0]]
    base_dpm = base["processed"] / base["seconds"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"model: {model}; {args.docs} docs, --max-tokens {args.max_tokens}, --ctx {args.ctx}")
    for parallel in args.parallel[1:]:
        r = results[parallel]
        dpm_ratio = (r["processed"] / r["seconds"]) / base_dpm
        tps_ratio = r["completion_tokens_per_s"] / max(base["completion_tokens_per_s"], 1e-9)
        verdict = "meets" if dpm_ratio >= 1.4 else "BELOW"
        print(
            f"--parallel {parallel} vs {args.parallel[0]}: documents/min x{dpm_ratio:.2f}, "
            f"generated tok/s x{tps_ratio:.2f} ({verdict} the 1.4x target)"
        )


if __name__ == "__main__":
    main()
