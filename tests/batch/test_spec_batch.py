"""`sovcli batch` with speculative decoding on and off: the same records, drafts really used.

The folder holds the benchmark's generated documents (sovcli/engine/workloads.py); the prompt
asks for a copy-heavy rewrite, where n-gram drafts are often right. Reproducible mode never
drafts, so both runs are without it (SOVCLI_REPRODUCIBLE=0), one document at a time: with
several at once an answer there depends on which others share its steps, drafts or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sovcli.engine.workloads import sample_documents

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Rewrite this text with the typos fixed, keeping every name and number:\n\n{text}"
ANSWER_KEYS = ("status", "finish_reason", "output", "output_text", "error", "tokens")


def _batch(gguf: Path, docs: Path, out: Path, spec: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOVCLI_NO_PROGRESS="1", SOVCLI_REPRODUCIBLE="0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = ["batch", str(gguf), str(docs), "-o", str(out), "--prompt", PROMPT]
    args += ["--temperature", "0", "--max-tokens", "40", "--ctx", "1024", "--parallel", "1"]
    args += ["--threads", "1", "--spec", spec]
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _answers(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["path"]: {k: r.get(k) for k in ANSWER_KEYS} for r in records}


def test_batch_records_are_the_same_with_speculation_on_and_off(tmp_path: Path, smollm2_gguf):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, doc in enumerate(sample_documents(5, seed=3)):
        # One paragraph each: short prompts keep the test fast; the text is copied verbatim.
        (docs / f"{i:02d}-{doc.kind}.txt").write_text(
            f"{doc.title}\n\n{doc.paragraphs[0]}\n", encoding="utf-8"
        )
    plain = _batch(smollm2_gguf, docs, tmp_path / "plain.jsonl", "off")
    assert plain.returncode == 0, plain.stderr
    spec = _batch(smollm2_gguf, docs, tmp_path / "spec.jsonl", "always")
    assert spec.returncode == 0, spec.stderr
    off, on = _answers(tmp_path / "plain.jsonl"), _answers(tmp_path / "spec.jsonl")
    assert len(off) == 5 and on == off
    assert "speculative decoding: drafted" in spec.stderr  # the summary says what it drafted
    assert "speculative decoding: drafted" not in plain.stderr
    record = json.loads((tmp_path / "spec.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert record.get("speculative") == "always"
