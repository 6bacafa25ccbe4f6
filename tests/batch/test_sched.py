"""Issue #16 item 3 without a model: fair sharing of sequences, per-chunk progress, truncated
answers and `--retry`, a single file as input (fake backends and a fake endpoint on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_endpoint import serve

from sovcli.batch.backends import Completion, GenerationSettings, PromptJob, trim_cut
from sovcli.batch.chunklog import chunklog_path
from sovcli.batch.isolate import ExtractOptions
from sovcli.batch.prompt import PromptTemplate
from sovcli.batch.runner import BatchJob
from sovcli.batch.sched import Scheduler
from sovcli.batch.session import BatchSession
from sovcli.batch.work import DocWork

pytestmark = pytest.mark.timeout(120)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _job(docs: Path, out: Path, **extra) -> BatchJob:
    return BatchJob(
        input_dir=docs,
        output=out,
        template=PromptTemplate("Summarise {name}: {text}"),
        settings=GenerationSettings(max_tokens=8),
        model={"ref": "fake:local", "file_sha256": "f" * 64},
        extract=ExtractOptions(isolate=False),  # in this process: no worker to start
        **extra,
    )


class _Backend:
    """Answers every call; remembers which document each call was for, in order."""

    label = "fake"

    def __init__(self, fail_after: int | None = None, finish: str = "stop") -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.fail_after = fail_after
        self.finish = finish

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def text_budget(self, render, max_tokens: int) -> int:
        return 4096

    def complete_many(self, jobs: list[PromptJob], settings) -> list[Completion]:
        out = []
        for job in jobs:
            message = job.render(job.text)
            name = message.split(":", 1)[0].removeprefix("Summarise ")
            with self.lock:
                self.calls.append(name)
                n = len(self.calls)
            if self.fail_after is not None and n > self.fail_after:
                raise KeyboardInterrupt  # the run is killed here (as SIGKILL would)
            time.sleep(0.01)  # a call takes a moment, as on an engine
            out.append(Completion(f"part {n}", 10, 2, self.finish, 0.01))
        return out


def _folder(tmp_path: Path, small: int = 6, long_words: int = 640) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    words = " ".join(f"w{i}" for i in range(long_words))
    (docs / "a-long.txt").write_text(words)
    for i in range(small):
        (docs / f"small{i}.txt").write_text(f"memo {i} is short")
    return docs


def _work(name: str, calls: int, seq: int) -> DocWork:
    work = DocWork(doc=None, seq=seq, doc_id=name, name=name, extracted=None, chunks=calls)
    work.begin([PromptJob(lambda t: t, f"{name}-{i}") for i in range(calls)], lambda _s: None)
    return work


def test_a_long_document_gets_one_sequence_while_small_ones_wait() -> None:
    stop = threading.Event()
    sched = Scheduler([], lookahead=4, stop=stop)
    sched.open = 99
    long = _work("long", 40, seq=0)  # admitted first: a long document at the head of the queue
    sched._extracting = 1
    sched.admitted(long)
    for i in range(3):
        sched._extracting += 1
        sched.admitted(_work(f"small{i}", 1, seq=i + 1))
    picked = [sched.next_call(lambda: True) for _ in range(4)]  # four sequences
    names = [work.name for work, _index in picked]
    assert names.count("long") == 1  # one sequence for the long one, three for the others
    assert sorted(n for n in names if n != "long") == ["small0", "small1", "small2"]
    for work, index in picked:  # the small ones finish; now the long one takes every sequence
        if work.name != "long":
            sched.answered(work, index, Completion("x", 1, 1, "stop", 0.0))
            sched.finished(work)
    more = [sched.next_call(lambda: True)[0].name for _ in range(3)]
    assert more == ["long", "long", "long"]


def test_small_documents_are_recorded_before_a_long_one_ends(tmp_path: Path) -> None:
    docs = _folder(tmp_path)
    out = tmp_path / "out.jsonl"
    backend = _Backend()
    job = _job(docs, out, parallel=2, chunk_tokens=64, chunk_overlap=0)
    summary = BatchSession(job, backends=[backend]).run()
    assert summary.ok == 7 and summary.failed == 0
    order = [r["path"] for r in _records(out)]
    assert order[-1] == "a-long.txt"  # every small document was recorded before it
    long = _records(out)[-1]
    assert long["chunks"] == 10 and long["calls"] == 11  # 10 chunks, then one combine
    assert long["chunks_resumed"] == 0
    assert not chunklog_path(out).exists()  # nothing left in progress


def _killed_after(tmp_path: Path, calls: int) -> tuple[Path, Path, BatchJob]:
    """A long document whose run is killed after `calls` answers."""
    docs = _folder(tmp_path, small=0)
    out = tmp_path / "out.jsonl"
    job = _job(docs, out, parallel=1, chunk_tokens=64, chunk_overlap=0)
    with pytest.raises(KeyboardInterrupt):
        BatchSession(job, backends=[_Backend(fail_after=calls)]).run()
    return docs, out, job


def test_a_killed_long_document_resumes_from_its_saved_chunks(tmp_path: Path) -> None:
    docs, out, job = _killed_after(tmp_path, 4)
    assert out.read_bytes() == b""  # no record: the document is not finished
    saved = chunklog_path(out).read_text().splitlines()
    assert len(saved) == 4  # the answers that arrived were each saved (and fsynced)
    again = _Backend()
    summary = BatchSession(job, backends=[again]).run()
    assert summary.ok == 1
    assert len(again.calls) == 10 - 4 + 1  # only the missing chunks, then the combine
    record = _records(out)[0]
    assert record["chunks"] == 10 and record["chunks_resumed"] == 4
    fresh_out = tmp_path / "fresh.jsonl"
    BatchSession(_job(docs, fresh_out, parallel=1, chunk_tokens=64, chunk_overlap=0),
                 backends=[_Backend()]).run()  # fmt: skip
    assert set(record) == set(_records(fresh_out)[0])  # the same shape as a run never stopped
    assert not chunklog_path(out).exists()


def test_saved_chunks_of_another_prompt_are_never_reused(tmp_path: Path) -> None:
    _docs, out, job = _killed_after(tmp_path, 3)
    other = BatchJob(**{**job.__dict__, "template": PromptTemplate("Summarise {name}: {text}!")})
    backend = _Backend()
    BatchSession(other, backends=[backend]).run()
    assert len(backend.calls) == 11 and _records(out)[0]["chunks_resumed"] == 0


def test_a_cut_multibyte_character_is_dropped() -> None:
    cut = trim_cut(Completion("Gr\u00fc\u00dfe aus K\u00f6ln \ufffd", 5, 4, "length", 0.1))
    assert cut.text == "Gr\u00fc\u00dfe aus K\u00f6ln "
    whole = trim_cut(Completion("a \ufffd", 5, 2, "stop", 0.1))  # not cut: kept as it is
    assert whole.text == "a \ufffd"


def _sovcli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOVCLI_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args], capture_output=True, text=True, timeout=90,
        env=env, check=False,
    )  # fmt: skip


def _cut_when_short(payload: dict):
    """b.txt needs more than 50 tokens: cut (finish_reason length) below that."""
    text = payload["messages"][0]["content"]
    cut = "b.txt" in text and payload["max_tokens"] < 50
    body = {
        "choices": [
            {"message": {"content": "Zusammenfassung f\u00fcr" if cut else "done"},
             "finish_reason": "length" if cut else "stop"}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": payload["max_tokens"] if cut else 2},
    }  # fmt: skip
    return 200, json.dumps(body).encode()


@pytest.mark.slow  # a few sovcli processes
def test_truncated_status_report_column_and_retry_of_those_only(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a short memo")
    (docs / "b.txt").write_text("a memo that needs a long answer")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    out = tmp_path / "out.jsonl"
    with serve(_cut_when_short) as endpoint:
        base = ["batch", "m", str(docs), "-o", str(out), "-p", "Summarise {name}: {text}",
                "--endpoint", endpoint.url]  # fmt: skip
        first = _sovcli(*base, "--max-tokens", "8")
        assert first.returncode == 1, first.stderr  # broken.pdf failed
        assert "1 answers cut at --max-tokens" in first.stderr
        records = {r["path"]: r for r in _records(out)}
        assert records["a.txt"]["status"] == "ok"
        assert records["b.txt"]["status"] == "truncated"
        assert records["b.txt"]["finish_reason"] == "length"
        assert records["broken.pdf"]["status"] == "error"
        report = _sovcli("batch-report", str(out), "--format", "csv")
        rows = [line.split(",")[:3] for line in report.stdout.splitlines()]
        assert rows[0] == ["path", "status", "finish"]
        assert ["b.txt", "truncated", "length"] in rows and ["a.txt", "ok", "stop"] in rows
        kept_a = next(line for line in out.read_text().splitlines() if '"a.txt"' in line)

        sent_before = len(endpoint.requests)
        again = _sovcli(*base, "--max-tokens", "64", "--retry", "truncated")
        assert again.returncode == 1, again.stderr  # broken.pdf is still a failure (kept)
        posts = [r for r in endpoint.requests[sent_before:] if r.method == "POST"]
        assert len(posts) == 1 and b"b.txt" in posts[0].body  # only the truncated one
        records = {r["path"]: r for r in _records(out)}
        assert len(_records(out)) == 3
        assert records["b.txt"]["status"] == "ok" and records["b.txt"]["params"]["max_tokens"] == 64
        assert kept_a in out.read_text().splitlines()  # a.txt kept exactly as it was
        bad = _sovcli(*base, "--retry", "sometimes")
        assert bad.returncode == 2 and "unknown outcome 'sometimes'" in bad.stderr


@pytest.mark.slow  # sovcli processes
def test_a_single_file_is_a_valid_input(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.txt").write_text("The audit is due on Friday.")
    (docs / "other.txt").write_text("not asked for")
    out = tmp_path / "out.jsonl"
    with serve() as endpoint:
        args = ["batch", "m", str(docs / "memo.txt"), "-o", str(out), "-p", "{text}",
                "--endpoint", endpoint.url]  # fmt: skip
        result = _sovcli(*args)
        assert result.returncode == 0, result.stderr
        (record,) = _records(out)
        assert record["path"] == "memo.txt" and record["status"] == "ok"
        assert record["replay"]["input"] == str(docs)  # the folder: input / path is the file
        rerun = _sovcli(*args)
        assert rerun.returncode == 0 and "1 already done" in rerun.stderr
    itself = _sovcli("batch", "m", str(out), "-o", str(out), "-p", "{text}", "--endpoint",
                     "http://127.0.0.1:9")  # fmt: skip
    assert itself.returncode == 2 and "is the results file" in itself.stderr
