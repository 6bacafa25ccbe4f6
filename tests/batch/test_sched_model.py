"""Issue #16 item 3 with the real model, as a user runs it: `sovcli batch` in a subprocess
over a long document and small ones, interrupted (SIGINT) and killed (SIGKILL) mid-way
through the long one, then resumed; an answer cut inside a multibyte character.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sovcli.batch.chunklog import chunklog_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SMALL = [f"memo{i}.txt" for i in range(4)]
# ~1100 tokens: about 17 chunks of --chunk-tokens 64 (the assertions need more than 10)
SECTIONS = 36
INTERRUPTED = re.compile(r"interrupted: (\d+) documents saved, (\d+) chunks in progress kept")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    return env


def _folder(base: Path) -> Path:
    docs = base / "docs"
    docs.mkdir()
    sentences = [
        f"Section {i}: the branch in district {i % 7} reported {i * 13 % 97} new accounts, "
        f"and the auditor noted {i % 5} open findings about cash handling."
        for i in range(SECTIONS)
    ]
    (docs / "annual-report.txt").write_text("\n".join(sentences))
    for i, name in enumerate(SMALL):
        (docs / name).write_text(f"Memo {i}: the audit of branch {i} is due in week {i + 3}.")
    return docs


def _command(model: Path, docs: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "sovcli", "batch", str(model), str(docs), "-o", str(out),
        "--prompt", "Summarise {name} in one sentence: {text}", "--ctx", "512",
        "--max-tokens", "4", "--parallel", "2", "--chunk-tokens", "64", "--chunk-overlap", "0",
        "--threads", "1",
    ]  # fmt: skip


def _records(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), f"a document was recorded twice: {paths}"
    return {r["path"]: r for r in records}


def _saved(out: Path) -> int:
    """Answers in the work-in-progress file (whole lines only)."""
    log = chunklog_path(out)
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _recorded(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["path"] for line in out.read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")}  # fmt: skip


@contextmanager
def _running(model: Path, docs: Path, out: Path) -> Iterator[subprocess.Popen]:
    """`sovcli batch` started in the background (killed at the end if still running)."""
    process = subprocess.Popen(
        _command(model, docs, out), env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _run_until(process: subprocess.Popen, ready, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ready():
            return
        assert process.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError("the run did not get there in time")


def _resume(model: Path, docs: Path, out: Path) -> dict[str, dict]:
    rerun = subprocess.run(
        _command(model, docs, out), env=_env(), capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr
    records = _records(out)
    assert sorted(records) == sorted(["annual-report.txt", *SMALL])
    assert not chunklog_path(out).exists()  # nothing left in progress
    return records


def test_ctrl_c_mid_document_stops_at_once_saying_what_is_kept_then_resumes(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    docs = _folder(tmp_path)
    out = tmp_path / "results.jsonl"
    with _running(smollm2_gguf, docs, out) as process:
        # small documents are recorded while the long one is under way (3 answers saved)
        _run_until(process, lambda: _recorded(out) >= set(SMALL) and _saved(out) >= 3)
        assert "annual-report.txt" not in _recorded(out)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _stdout, stderr = process.communicate(timeout=60)
        delay = time.monotonic() - sent
    assert process.returncode == 130, stderr
    assert delay < 5.0, f"Ctrl-C took {delay:.1f} s"
    found = INTERRUPTED.search(stderr)
    assert found, stderr
    assert "Traceback" not in stderr
    saved, kept = int(found.group(1)), int(found.group(2))
    assert saved == len(_recorded(out)) >= len(SMALL)
    assert kept == _saved(out) >= 3
    records = _resume(smollm2_gguf, docs, out)
    long = records["annual-report.txt"]
    assert long["chunks"] > 10 and long["chunks_resumed"] == kept  # not computed again
    assert long["calls"] > long["chunks"]  # the chunk answers were combined


def test_sigkill_mid_document_then_rerun_reuses_the_saved_chunks(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    docs = _folder(tmp_path)
    out = tmp_path / "results.jsonl"
    with _running(smollm2_gguf, docs, out) as process:
        _run_until(process, lambda: _saved(out) >= 4)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    before = _recorded(out)
    saved = _saved(out)
    assert "annual-report.txt" not in before and saved >= 4
    records = _resume(smollm2_gguf, docs, out)
    long = records["annual-report.txt"]
    assert long["chunks_resumed"] == saved
    shapes = {frozenset(r) for r in records.values()}
    assert len(shapes) == 1  # every record has the same fields, the resumed one too


def test_an_answer_cut_inside_a_multibyte_character_has_no_replacement_char(
    smollm2_gguf: Path,
) -> None:
    from sovcli.batch.backends import GenerationSettings, LocalBackend, PromptJob
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams

    prompt = "Write the word 日本語の文章 five times: 日本語の文章 日本語の文章 日本語の文章"
    with Engine(EngineConfig(model_path=str(smollm2_gguf), n_ctx=256, n_threads=1)) as engine:
        backend = LocalBackend(engine)
        job = PromptJob(lambda text: text, prompt)
        raw_cut = 0
        for limit in range(1, 13):
            raw = engine.generate(
                GenerationRequest(backend.prompt_tokens(job), max_tokens=limit,
                                  sampling=SamplingParams(temperature=0.0))
            )  # fmt: skip
            raw_cut += raw.finish_reason == "length" and raw.text.endswith("\ufffd")
            settings = GenerationSettings(max_tokens=limit, temperature=0.0)
            (answer,) = backend.complete_many([job], settings)  # what a batch record gets
            assert "\ufffd" not in answer.text, (limit, answer.text)
    assert raw_cut >= 1  # the engine did cut inside a character at least once
