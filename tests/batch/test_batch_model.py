"""`sovcli batch` end to end with the real SmolLM2 model over a generated folder.

Small contexts and max_tokens keep it fast; the folder mixes every supported type with
documents that must fail, and one document longer than the context.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from batch_docgen import make_corpus
from typer.testing import CliRunner

from sovcli.cli.main import app

pytestmark = pytest.mark.slow  # the real model, in-process and in sovcli subprocesses

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Summarise {name} in one sentence: {text}"
FAST = ["--ctx", "512", "--max-tokens", "6", "--parallel", "4"]
ANSWERED = ("ok", "truncated")  # truncated: cut at --max-tokens (6 here), finish "length"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _by_path(records: list[dict]) -> dict[str, dict]:
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), f"a document was recorded twice: {paths}"
    return {r["path"]: r for r in records}


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SOVCLI_NO_PROGRESS"] = "1"
    return env


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path):
    """One real run over the whole mixed folder (shared by the tests below)."""
    base = tmp_path_factory.mktemp("batch")
    docs = base / "docs"
    expected = make_corpus(docs)
    out = base / "results.jsonl"
    result = CliRunner().invoke(
        app, ["batch", str(smollm2_gguf), str(docs), "-o", str(out), "--prompt", PROMPT, *FAST]
    )
    return docs, out, expected, result


def test_every_document_is_recorded_once_with_the_right_status(corpus_run, smollm2_gguf) -> None:
    _docs, out, expected, result = corpus_run
    assert result.exit_code == 1, result.output  # some documents failed on purpose
    records = _by_path(_records(out))
    assert set(records) == set(expected)
    for path, status in expected.items():
        record = records[path]
        if status == "ok" and record["status"] == "truncated":
            assert record["finish_reason"] == "length", record
        else:
            assert record["status"] == status, record
    reasons = {p: r["error"] for p, r in records.items() if r["status"] == "error"}
    assert reasons["broken.pdf"].startswith("corrupt PDF")
    assert reasons["empty.txt"] == "empty file"
    assert reasons["image.bin"] == "unsupported file type .bin"
    assert reasons["garbage.txt"] == "binary content, not text"
    for record in records.values():
        assert record["sha256"] and len(record["sha256"]) == 64
        assert record["model"]["file_sha256"] == (
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        )
        assert record["prompt_sha256"] and record["params"]["max_tokens"] == 6
        if record["status"] in ANSWERED:
            assert isinstance(record["output"], str) and record["output"]
            assert 0 < record["tokens"]["completion"] <= 6 * record["calls"]
            assert record["tokens"]["prompt"] > 0
            assert record["seconds"] > 0
    # the long document did not fit one 512-token context: chunked, then combined
    assert records["long.txt"]["chunks"] >= 2
    assert records["long.txt"]["calls"] == records["long.txt"]["chunks"] + 1
    assert records["notes.txt"]["chunks"] == 1
    assert "5 failed" not in result.output and "4 failed" in result.output


def test_rerun_skips_everything_and_writes_nothing(corpus_run, smollm2_gguf) -> None:
    docs, out, expected, _ = corpus_run
    before = out.read_bytes()
    result = CliRunner().invoke(
        app,
        [
            "batch",
            str(smollm2_gguf),
            str(docs),
            "-o",
            str(out),
            "--prompt",
            PROMPT,
            *FAST,
            "--json",
        ],
    )
    assert result.exit_code == 1  # earlier failures still count
    assert out.read_bytes() == before
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["skipped"] == len(expected) and summary["processed"] == 0
    assert summary["failed_before"] == 4


def test_changed_document_is_redone_and_replaces_its_record(corpus_run, smollm2_gguf) -> None:
    docs, out, expected, _ = corpus_run
    (docs / "readme.md").write_text("# Project Falcon\n\nFalcon was cancelled.\n", encoding="utf-8")
    old = _by_path(_records(out))["readme.md"]
    result = CliRunner().invoke(
        app,
        ["batch", str(smollm2_gguf), str(docs), "-o", str(out), "--prompt", PROMPT, *FAST,
         "--include", "*.md"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = _by_path(_records(out))  # still exactly one record per document
    assert set(records) == set(expected)
    assert records["readme.md"]["sha256"] != old["sha256"]


def test_dry_run_and_reports(corpus_run, smollm2_gguf) -> None:
    docs, out, expected, _ = corpus_run
    (docs / "new.txt").write_text("A new memo about the audit in May.\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["batch", str(smollm2_gguf), str(docs), "-o", str(out), "--prompt", PROMPT, *FAST,
         "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    states = {line.split()[2]: line.split()[0] for line in result.stdout.splitlines()}
    assert states["new.txt"] == "todo"
    assert states["notes.txt"] == "done" and states["broken.pdf"] == "failed"
    (docs / "new.txt").unlink()
    report = CliRunner().invoke(app, ["batch-report", str(out), "--format", "csv"])
    assert report.exit_code == 0
    rows = list(csv.reader(io.StringIO(report.stdout)))
    assert rows[0][:4] == ["path", "status", "finish", "chunks"]
    assert len(rows) == 1 + len(expected)
    # an answer cut at --max-tokens 6 shows as truncated, with its finish reason
    shown = {row[0]: "ok" if row[1:3] == ["truncated", "length"] else row[1] for row in rows[1:]}
    assert shown == expected


def test_schema_extraction_validates(tmp_path: Path, smollm2_gguf: Path) -> None:
    import jsonschema

    docs = tmp_path / "kyc"
    docs.mkdir()
    (docs / "a.txt").write_text("Customer: Alice Martin. Country: France.\n", encoding="utf-8")
    (docs / "b.txt").write_text("Customer: Bob Stone. Country: Germany.\n", encoding="utf-8")
    schema = {
        "type": "object",
        "properties": {"customer": {"type": "string", "maxLength": 20}},
        "required": ["customer"],
        "additionalProperties": False,
    }
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(schema), encoding="utf-8")
    out = tmp_path / "kyc.jsonl"
    result = CliRunner().invoke(
        app,
        ["batch", str(smollm2_gguf), str(docs), "-o", str(out), "--schema", str(schema_path),
         "--prompt", "Extract the customer name as JSON from: {text}", "--ctx", "512",
         "--max-tokens", "40", "--parallel", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = _by_path(_records(out))
    assert set(records) == {"a.txt", "b.txt"}
    for record in records.values():
        assert record["status"] == "ok" and record["valid"] is True
        jsonschema.validate(record["output"], schema)  # stored parsed, and valid
        assert record["params"]["schema_sha256"]


def _wait_for_records(path: Path, count: int, process: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("no records appeared in time")


def test_sigkill_midway_then_rerun_records_every_document_once(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    names = [f"memo{i:02d}.txt" for i in range(6)]
    for i, name in enumerate(names):
        (docs / name).write_text(f"Memo {i}: the audit of branch {i} is due in week {i + 3}.\n")
    out = tmp_path / "results.jsonl"
    command = [
        sys.executable, "-m", "sovcli", "batch", str(smollm2_gguf), str(docs), "-o", str(out),
        "--prompt", PROMPT, "--ctx", "512", "--max-tokens", "6", "--parallel", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_records(out, 2, process, limit=240)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    first = _records(out)
    assert 2 <= len(first) < len(names)
    # A kill can land mid-write: simulate the torn tail such a kill leaves behind.
    with open(out, "ab") as fh:
        fh.write(b'{"path": "memo07.txt", "sha256": "ab')
    rerun = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "removed a torn last line" in rerun.stderr
    records = _by_path(_records(out))
    assert sorted(records) == names
    assert all(r["status"] in ANSWERED for r in records.values())
    # the records written before the kill were kept, not redone
    assert [r["started_at"] for r in first] == [records[r["path"]]["started_at"] for r in first]


LISTENING = re.compile(r"(http://127\.0\.0\.1:\d+)/v1")


def test_endpoint_sends_the_work_to_a_running_sovcli_serve(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    log_path = tmp_path / "serve.log"
    env = _env(tmp_path)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sovcli", "serve", str(smollm2_gguf), "--port", "0",
             "--parallel", "2", "--ctx", "1024"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()
            match = LISTENING.search(log_path.read_text(errors="replace"))
            url = match.group(1) if match else None
            time.sleep(0.1)
        assert url, log_path.read_text()
        models = None
        while models is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=10) as response:
                    models = json.loads(response.read())["data"]
            except OSError:
                time.sleep(0.2)
        model_id = models[0]["id"]
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "a.txt").write_text("The branch in Lyon closes on Friday.\n")
        (docs / "b.md").write_text("# Notice\n\nThe payroll run moves to the 25th.\n")
        (docs / "c.pdf").write_bytes(b"not a pdf")
        out = tmp_path / "remote.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "sovcli", "batch", model_id, str(docs), "-o", str(out),
             "--prompt", PROMPT, "--max-tokens", "6", "--endpoint", url, "--parallel", "2"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr  # c.pdf fails
        records = _by_path(_records(out))
        assert set(records) == {"a.txt", "b.md", "c.pdf"}
        assert records["c.pdf"]["status"] == "error"
        for name in ("a.txt", "b.md"):
            record = records[name]
            assert record["status"] in ANSWERED, record
            assert record["backend"] == url + "/v1"
            assert record["output"] and record["tokens"]["completion"] > 0
            assert record["model"] == {"ref": model_id, "remote": True}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_progress_and_summary_in_a_pipe_are_whole_plain_lines(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"memo{i}.txt").write_text(f"Memo {i}: the audit is due in week {i + 3}.\n")
    out = tmp_path / ("a-results-folder-with-a-long-name-" * 3) / "results.jsonl"
    env = _env(tmp_path)
    del env["SOVCLI_NO_PROGRESS"]
    result = subprocess.run(
        [sys.executable, "-m", "sovcli", "batch", str(smollm2_gguf), str(docs), "-o", str(out),
         "--prompt", PROMPT, "--ctx", "512", "--max-tokens", "6", "--parallel", "2"],
        env={**env, "COLUMNS": "80"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "batch: 3 of 3 documents to process (0 already done)" in lines
    assert any(re.fullmatch(r"batch [\d,]+ tok: 3/3 docs \(100%\).* in \d+:\d\d:\d\d", line)
               for line in lines), lines  # fmt: skip
    counts = re.compile(r"3 documents: \d ok, (\d truncated, )?0 failed")
    summary = [line for line in lines if counts.match(line)]
    assert len(summary) == 1 and summary[0].endswith(f"-> {out}")  # one line, not re-wrapped
    assert "\x1b[" not in result.stderr  # no terminal codes in a pipe
