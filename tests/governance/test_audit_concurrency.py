"""Many writers on one audit trail at once: processes with threads, a server answering real
HTTP requests, a batch and a `run` with the real model. Never a half line, never a fork:
`sovcli audit verify` is green and seq runs 1..N without a gap or a duplicate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sovcli.governance.audit_files import ChainFiles

from .conftest import ROOT, run_sovcli

SERVER_TESTS = ROOT / "tests" / "server"
WRITER = """
import sys, threading
from sovcli.governance.audit import audit_event

def write(thread):
    for n in range(int(sys.argv[2])):
        audit_event("batch_document", document=f"{sys.argv[1]}-{thread}-{n}.txt",
                    document_sha256="ab" * 32, status="ok", prompt_tokens=n)

threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "audit"
    monkeypatch.setenv("SOVCLI_AUDIT_DIR", str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return folder


def start_writers(names: list[str], per_thread: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", WRITER, name, str(per_thread)], cwd=ROOT)
        for name in names
    ]


def chain_records(folder: Path) -> list[dict]:
    """Every record of the chain in order; each line must be whole JSON."""
    out = []
    for path in ChainFiles.at(folder).all_files():
        raw = path.read_bytes()
        assert raw.endswith(b"\n"), f"{path.name} ends with a half line"
        out.extend(json.loads(line) for line in raw.splitlines())
    return out


def assert_one_chain(folder: Path) -> list[dict]:
    records = chain_records(folder)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))  # no gap, no dupe
    result = run_sovcli("audit", "verify", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: the chain is intact" in result.stdout
    return records


def test_processes_and_threads_append_one_chain(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_ROTATE_SIZE", "8k")  # rotations while they write
    writers = start_writers([f"p{n}" for n in range(4)], 40)
    assert all(w.wait(120) == 0 for w in writers)
    records = assert_one_chain(trail)
    documents = [r for r in records if r["event"] == "batch_document"]
    assert len(documents) == 4 * 3 * 40
    assert len({r["document"] for r in documents}) == len(documents)
    assert len(ChainFiles.at(trail).rotated()) >= 3
    assert len({r["pid"] for r in documents}) == 4


# ---- a server and a batch at once --------------------------------------------------------
def _start_fake_server(trail: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    settings = {"audit_log": str(trail / "audit.jsonl"), "log_requests": False, "parallel": 4}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(SERVER_TESTS / "fake_serve.py"), json.dumps(settings)],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while "serving fake at" not in log_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    url = log_path.read_text().split("serving fake at ", 1)[1].split("/v1")[0]
    while not _healthy(url):  # the model loads in the background
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    return process, url


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _chat(url: str, n: int) -> int:
    body = json.dumps(
        {
            "model": "smollm2-fake",
            "messages": [{"role": "user", "content": f"Say {n}."}],
            "max_tokens": 8,
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:  # the status says it; the body says why
        raise AssertionError(f"{exc.code}: {exc.read()[:300]!r}") from None


@pytest.mark.slow  # seconds: a server process, 200 requests and writers at once
def test_a_server_and_batch_writers_share_one_chain(trail, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_ROTATE_SIZE", "32k")
    process, url = _start_fake_server(trail, tmp_path / "server.log")
    statuses: list[int] = []
    try:
        writers = start_writers(["batch-a", "batch-b", "batch-c"], 60)

        def client(k: int) -> None:
            for n in range(25):
                statuses.append(_chat(url, k * 100 + n))

        clients = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        assert all(w.wait(120) == 0 for w in writers)
    finally:
        process.terminate()
        process.wait(30)
    assert statuses == [200] * 200
    records = assert_one_chain(trail)
    served = [r for r in records if r["event"] == "request" and r.get("status") == 200]
    assert len(served) == 200  # every answer a client saw has its record
    assert {r["command"] for r in served} == {"serve"}
    assert len([r for r in records if r["event"] == "batch_document"]) == 3 * 3 * 60
    assert len(ChainFiles.at(trail).rotated()) >= 2


@pytest.mark.slow  # loads the real model twice
def test_real_run_and_batch_records_while_a_server_writes(
    trail, tmp_path, smollm2_model, monkeypatch
):
    """The records of a real `run` and a real `batch` (model digest, token counts, finish,
    duration, document id) land in the chain a busy server writes into."""
    from sovcli.governance.identity import model_digest

    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"memo{n}.txt").write_text(f"Memo {n}: the audit of branch {n} is in May.\n")
    process, url = _start_fake_server(trail, tmp_path / "server.log")
    stop = threading.Event()
    statuses: list[int] = []

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            statuses.append(_chat(url, n))
            n += 1

    clients = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        run = run_sovcli("run", "smollm2-135m", "Say hello.", "--max-tokens", "8",
                         "--temperature", "0")  # fmt: skip
        batch = run_sovcli("batch", "smollm2-135m", docs, "-o", tmp_path / "out.jsonl",
                           "--prompt", "Summarise: {text}", "--max-tokens", "8")  # fmt: skip
    finally:
        stop.set()
        for thread in clients:
            thread.join()
        process.terminate()
        process.wait(30)
    assert run.returncode == 0, run.stderr
    assert batch.returncode == 0, batch.stderr
    assert statuses and set(statuses) == {200}
    records = assert_one_chain(trail)
    digest = model_digest(smollm2_model)
    (answer,) = [r for r in records if r["event"] == "run"]
    assert answer["model_digest"] == digest and answer["model"] == "smollm2-135m:Q4_1"
    assert answer["completion_tokens"] > 0 and answer["prompt_tokens"] > 0
    assert answer["finish_reason"] in ("stop", "length") and answer["duration_s"] > 0
    assert answer["command"] == "run" and "completion" not in answer and "prompt" not in answer
    assert answer["params"]["temperature"] == 0
    documents = [r for r in records if r["event"] == "batch_document"]
    assert sorted(r["document"] for r in documents) == ["memo0.txt", "memo1.txt", "memo2.txt"]
    journal = {
        r["path"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    }
    for record in documents:  # the audit record of each document agrees with its result
        result = journal[record["document"]]
        assert record["model_digest"] == digest and record["status"] == result["status"]
        assert record["document_sha256"] == result["sha256"]
        assert len(record["document_sha256"]) == 64 and record["completion_tokens"] > 0
        assert record["journal"] == str(tmp_path / "out.jsonl")
    assert len([r for r in records if r["event"] == "request"]) == len(statuses)
