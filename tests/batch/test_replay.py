"""Reproducible batch answers and `sovcli audit replay` (issue #14 item 5), end to end.

The same folder of real documents (tests/engine/reproducible_texts.py) runs with
--parallel 1, --parallel 8, and --parallel 8 again while another sovcli process decodes on
the same CPU: the records' outputs are byte-identical. Then a record made under load is
replayed through the CLI and matches, and a tampered one is told apart.
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

# The real model in sovcli subprocesses; three batch runs take minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m:Q4_1"
PROMPT = "Explain to a new employee what {name} says, in a few sentences:\n\n{text}"
COMMON = ["--ctx", "768", "--max-tokens", "96", "--threads", "1", "--prompt", PROMPT]
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
    """`count` .txt files of real prose, ~1200 characters each."""
    folder.mkdir(parents=True)
    for name, text in real_texts(count, chars=1200):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    return env


def sovcli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args], capture_output=True, text=True, env=_env()
    )


def batch(docs: Path, out: Path, parallel: int) -> dict[str, dict]:
    done = sovcli("batch", MODEL, str(docs), "-o", str(out), "--parallel", str(parallel), *COMMON)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {r["path"]: r for r in records}


@pytest.fixture
def three_runs(tmp_path: Path, installed_smollm2, smollm2_gguf: Path):
    docs = tmp_path / "docs"
    real_documents(docs, 10)
    serial = batch(docs, tmp_path / "p1.jsonl", 1)
    parallel = batch(docs, tmp_path / "p8.jsonl", 8)
    # Another process decoding on the same cores meanwhile, until it is stopped.
    hammer = subprocess.Popen([sys.executable, "-c", HAMMER, str(smollm2_gguf)], env=_env())
    try:
        loaded = batch(docs, tmp_path / "p8-load.jsonl", 8)
        assert hammer.poll() is None, "the other process ended before the run under load did"
    finally:
        hammer.kill()
        hammer.wait()
    return tmp_path, serial, parallel, loaded


def test_parallel_1_8_and_8_under_load_give_identical_records_that_replay(three_runs):
    _, serial, parallel, loaded = three_runs
    # "truncated": the answer reached --max-tokens (most do: long answers are the point).
    assert len(serial) == 10 and all(r["status"] in ("ok", "truncated") for r in serial.values())
    long_answers = [r for r in serial.values() if r["tokens"]["completion"] >= 64]
    assert len(long_answers) >= 8, [r["tokens"] for r in serial.values()]
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
    done = subprocess.run(
        [sys.executable, "-m", "sovcli", "run", MODEL, question, "--temperature", "0",
         "--max-tokens", "72", "--threads", "1"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trail = tmp_path / "audit" / "audit.jsonl"
    lines = trail.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines, 1) if json.loads(line)["event"] == "run")
    record = json.loads(lines[number - 1])
    assert record["completion"].strip() and record["completion"].strip() in done.stdout

    replay = subprocess.run(
        [sys.executable, "-m", "sovcli", "audit", "replay", f"{trail}:{number}", "--json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["actual"] == record["completion"]

    edited = tmp_path / "edited.jsonl"
    edited.write_text(json.dumps(dict(record, completion=record["completion"] + "!")) + "\n")
    replay = subprocess.run(
        [sys.executable, "-m", "sovcli", "audit", "replay", f"{edited}:1"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert replay.returncode == 7 and "differs" in replay.stderr, replay.stderr
