"""The batch session and its CLI without a model: empty folders, foreign report files, and
progress lines in a pipe (a fake backend and a fake clock)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sovcli.batch.backends import Completion, GenerationSettings
from sovcli.batch.prompt import PromptTemplate
from sovcli.batch.runner import BatchJob
from sovcli.batch.session import BatchSession
from sovcli.errors import UsageError


def _sovcli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _job(docs: Path, out: Path, **extra) -> BatchJob:
    return BatchJob(
        input_dir=docs,
        output=out,
        template=PromptTemplate("Summarise: {text}"),
        settings=GenerationSettings(max_tokens=8),
        model={"ref": "fake:local", "file_sha256": "f" * 64},
        **extra,
    )


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_batch_on_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    docs = tmp_path / "empty"
    (docs / ".hidden").mkdir(parents=True)
    (docs / ".hidden" / "a.txt").write_text("hidden files do not count")
    out = tmp_path / "out.jsonl"
    for extra in ([], ["--dry-run"]):
        result = _sovcli(
            "batch", "no-such-model", str(docs), "-o", str(out), "-p", "{text}", *extra
        )
        assert result.returncode == 2, result.stderr
        assert f"error: no documents found in {docs}" in result.stderr
        assert "hint:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # nothing written, no model looked up


def test_include_that_matches_nothing_says_so(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello")
    session = BatchSession(_job(docs, tmp_path / "o.jsonl", include=("*.pdf",)))
    with pytest.raises(UsageError, match="no documents found") as caught:
        session.run()
    assert "--include" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "content",
    ["just some notes\nnot json\n", '{"a": 1}\n[1, 2]\n', ""],
    ids=["text", "other-json", "empty"],
)
def test_batch_report_refuses_a_file_that_is_not_a_results_file(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(content)
    result = _sovcli("batch-report", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"error: {path} is not a sovcli batch results file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error and its hint


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _FakeBackend:
    """Answers at once; each completion moves the fake clock on by `seconds`."""

    label = "fake"

    def __init__(self, clock: _FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def text_budget(self, render, max_tokens: int) -> int:
        return 4096

    def complete_many(self, jobs, settings) -> list[Completion]:
        self.clock.now += self.seconds
        return [Completion("a summary", 10, 5, "stop", self.seconds) for _ in jobs]


def test_progress_lines_while_running_with_a_steady_eta(tmp_path: Path, monkeypatch) -> None:
    import sovcli.cli.progress as renderer

    clock = _FakeClock()
    monkeypatch.setattr(renderer, "time", SimpleNamespace(monotonic=clock.monotonic))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"doc{i}.txt").write_text(f"document number {i}")
    stream = io.StringIO()
    progress = renderer.PlainProgress(stream, interval=4.0)  # a line every 4 (fake) seconds
    session = BatchSession(
        _job(docs, tmp_path / "out.jsonl"),
        backends=[_FakeBackend(clock, seconds=2.0)],
        progress=progress,
    )
    summary = session.run()
    assert summary.ok == 10
    lines = stream.getvalue().splitlines()
    assert lines[0] == "batch: 10 of 10 documents to process (0 already done)"
    running = [line for line in lines[1:-1] if "ETA" in line]
    assert len(running) >= 3, lines  # lines while it runs, not only at the end
    done = [int(re.search(r": (\d+)/10 docs", line).group(1)) for line in running]
    assert done == sorted(done) and done[-1] < 10
    assert all(re.search(r"batch [\d,]+ tok: ", line) for line in running), running
    # No guess until the average means something (10 s and 5% done), then 2 s per document,
    # steadily: the ETA is what is left at the average rate, every time.
    shown = [re.search(r"ETA (\d+):(\d\d):(\d\d)", line) for line in running]
    unknown = [m is None for m in shown]
    assert unknown == sorted(unknown, reverse=True), running  # "-:--:--" only at the start
    known = [(m.groups(), n) for m, n in zip(shown, done, strict=True) if m is not None]
    assert len(known) >= 2, running
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for (h, m, s), _ in known]
    assert seconds == [2 * (10 - n) for _, n in known]
    assert re.fullmatch(r"batch 50 tok: 10/10 docs \(100%\) .* in 0:00:20", lines[-1])
