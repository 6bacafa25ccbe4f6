"""Reproducible batch answers and `sovcli audit replay` (issue #14 item 5), end to end.

The same folder of real documents (tests/engine/reproducible_texts.py) runs with
--parallel 1 and --parallel 8 side by side (each the other's neighbour on the CPU), then
with --parallel 8 again while another sovcli process decodes on the same CPU: the records'
outputs (64 tokens each) are byte-identical. Then a record made under load is replayed
through the CLI and matches, and a tampered one is told apart.

Sized to stay sensitive: with SOVCLI_REPRODUCIBLE=0 these 8 documents of 300 characters
gave other outputs at --parallel 8 than at --parallel 1 for 4 of 8 (measured 2026-11-30).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from reproducible_texts import real_texts

# The real model in sovcli subprocesses; three batch runs take a minute on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m:Q4_1"
DOCS, CHARS, TOKENS = 8, 300, 64
# "point by point and in detail": every answer runs to --max-tokens (the issue asks >= 64)
PROMPT = "Explain to a new employee, point by point and in detail, what {name} says:\n\n{text}"
COMMON = ["--ctx", "768", "--max-tokens", str(TOKENS), "--threads", "1", "--prompt", PROMPT]
HAMMER = """
import sys
from sovcli.engine.core import Engine
from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams
engine = Engine(EngineConfig(model_path=sys.argv[1], n_parallel=3, n_ctx=512, n_threads=1))
hot = SamplingParams(temperature=0.9)
while True:
    streams = [engine.submit(GenerationRequest("Tell me a story about " + topic, max_tokens=200,
               sampling=hot, ignore_eos=True)) for topic in ("ships", "trains", "bees")]
    for stream in streams:
        stream.result()
"""


def real_documents(folder: Path, count: int) -> None:
    """`count` .txt files of real prose, `CHARS` characters each."""
    folder.mkdir(parents=True)
    for name, text in real_texts(count, chars=CHARS):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    return env


def _one_cpu() -> None:
    """In the child, before exec: `audit replay` has no --threads, and on one CPU it runs one
    thread (two OpenMP threads stall each other whenever another process takes a core)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def sovcli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m sovcli ARGS`; `audit replay` pinned to one CPU (see _one_cpu)."""
    pin = _one_cpu if args[:2] == ("audit", "replay") else None
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True, text=True, env=env or _env(), preexec_fn=pin,
    )  # fmt: skip


def start_batch(docs: Path, out: Path, parallel: int) -> subprocess.Popen[str]:
    """`sovcli batch` over `docs` into `out`, started in the background."""
    command = [sys.executable, "-m", "sovcli", "batch", MODEL, str(docs), "-o", str(out),
               "--parallel", str(parallel), *COMMON]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def finished(runs: dict[str, subprocess.Popen[str]], folder: Path) -> dict[str, dict]:
    """Wait for every run (each must succeed); {run name: {path: record}}."""
    try:
        for run in runs.values():
            _, stderr = run.communicate(timeout=900)
            assert run.returncode == 0, stderr
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate()
    found = {}
    for name in runs:
        lines = (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        found[name] = {r["path"]: r for r in map(json.loads, lines)}
    return found


@pytest.fixture
def three_runs(tmp_path: Path, installed_smollm2, smollm2_gguf: Path):
    docs = tmp_path / "docs"
    real_documents(docs, DOCS)
    # --parallel 1 and 8 at the same time: a core each, and each is load for the other.
    side_by_side = {f"p{n}": start_batch(docs, tmp_path / f"p{n}.jsonl", n) for n in (1, 8)}
    serial, parallel = finished(side_by_side, tmp_path).values()
    # Another process decoding on the same cores meanwhile, until it is stopped.
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, str(smollm2_gguf)], env=_env())
    try:
        run = start_batch(docs, tmp_path / "p8-load.jsonl", 8)
        loaded = finished({"p8-load": run}, tmp_path)["p8-load"]
        assert hammer.poll() is None, "the other process ended before the run under load did"
    finally:
        hammer.kill()
        hammer.wait()
    return tmp_path, serial, parallel, loaded


def test_parallel_1_8_and_8_under_load_give_identical_records_that_replay(three_runs):
    _, serial, parallel, loaded = three_runs
    # "truncated": the answer reached --max-tokens (most do: long answers are the point).
    assert len(serial) == DOCS and all(r["status"] in ("ok", "truncated") for r in serial.values())
    long_answers = [r for r in serial.values() if r["tokens"]["completion"] >= TOKENS]
    assert len(long_answers) >= DOCS - 1, [r["tokens"] for r in serial.values()]
    for path, record in serial.items():
        assert record["reproducible"] is True
        assert parallel[path]["output"] == record["output"], path
        assert loaded[path]["output"] == record["output"], path

    # `audit replay` re-runs a record made under load, alone: byte for byte the same.
    tmp_path = three_runs[0]
    results = tmp_path / "p8-load.jsonl"
    done = sovcli("audit", "replay", f"{results}:4", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["matches"] is True and answer["expected"] == answer["actual"]
    assert answer["actual"] == json.loads(results.read_text().splitlines()[3])["output"]

    lines = results.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record["output"] = record["output"].replace(" ", "  ", 1)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(json.dumps(record) + "\n", encoding="utf-8")
    done = sovcli("audit", "replay", str(tampered), "--id", record["path"])
    assert done.returncode == 7, done.stdout + done.stderr
    assert "differs" in done.stderr and "Traceback" not in done.stderr


def test_audit_replay_of_a_run_recorded_with_its_content(installed_smollm2, tmp_path):
    """`sovcli run` with SOVCLI_AUDIT_CONTENT=1 records prompt, answer and parameters; the
    record replays byte for byte, and an edited answer does not."""
    question = "Explain what a software licence is, for a new employee."
    env = dict(_env(), SOVCLI_AUDIT_CONTENT="1", SOVCLI_AUDIT_DIR=str(tmp_path / "audit"))
    done = sovcli(
        "run", MODEL, question, "--temperature", "0", "--max-tokens", "32", "--threads", "1",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trail = tmp_path / "audit" / "audit.jsonl"
    lines = trail.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines, 1) if json.loads(line)["event"] == "run")
    record = json.loads(lines[number - 1])
    assert record["completion"].strip() and record["completion"].strip() in done.stdout

    replay = sovcli("audit", "replay", f"{trail}:{number}", "--json", env=env)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["actual"] == record["completion"]

    edited = tmp_path / "edited.jsonl"
    edited.write_text(json.dumps(dict(record, completion=record["completion"] + "!")) + "\n")
    replay = sovcli("audit", "replay", f"{edited}:1", env=env)
    assert replay.returncode == 7 and "differs" in replay.stderr, replay.stderr
