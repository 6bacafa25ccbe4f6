"""The commands that write the audit trail: store changes are recorded, and a trail that
cannot be written stops a command before it changes or runs anything (fail closed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

from .conftest import ROOT, run_sovcli


def cli(*args: str | Path):
    """`sovcli ARGS` in-process (typer's runner)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "audit"
    monkeypatch.setenv("SOVCLI_AUDIT_DIR", str(folder))
    return folder


@pytest.fixture
def broken_trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An audit folder that cannot be created (a file stands where it should be)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SOVCLI_AUDIT_DIR", str(blocker / "audit"))
    return blocker


def records(folder: Path) -> list[dict]:
    path = folder / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_import_and_rm_are_recorded(trail, smollm2_gguf, tmp_path):
    imported = cli("import", smollm2_gguf, "--name", "memo-model", "--tag", "Q4_1")
    assert imported.exit_code == 0, imported.output
    removed = cli("rm", "memo-model:Q4_1", "--yes")
    assert removed.exit_code == 0, removed.output
    store = [r for r in records(trail) if r["event"] == "store"]
    assert [r["action"] for r in store] == ["import", "rm"]
    added, gone = store
    assert added["model"] == "memo-model:Q4_1" and added["path"] == str(smollm2_gguf)
    assert added["model_digest"].startswith("sha256:") and len(added["model_digest"]) == 71
    assert added["source"]["kind"] == "local"
    assert gone["model_digest"] == added["model_digest"] and gone["seq"] == added["seq"] + 1
    assert cli("audit", "verify").exit_code == 0


def test_rm_stops_when_the_trail_cannot_be_written(broken_trail, smollm2_model):
    result = cli("rm", smollm2_model.ref, "--yes")
    assert result.exit_code == 13
    assert "cannot write the audit trail" in result.stderr
    assert "SOVCLI_AUDIT_DIR" in result.stderr and "Traceback" not in result.output
    assert smollm2_model.gguf_path.exists()  # nothing changed unrecorded
    assert cli("list", "--json").stdout.count(smollm2_model.name) >= 1


def test_run_stops_before_loading_the_model(broken_trail, smollm2_model):
    """A real process: `run` refuses with exit 13 and one line, no answer and no traceback."""
    result = run_sovcli("run", smollm2_model.ref, "Say hi.", "--max-tokens", "4")
    assert result.returncode == 13, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot write the audit trail")
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_audit_off_runs_without_a_trail(broken_trail, smollm2_model, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT", "0")
    result = cli("rm", smollm2_model.ref, "--yes")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SOVCLI_AUDIT_ROTATE_SIZE", "lots", "SOVCLI_AUDIT_ROTATE_SIZE='lots' is not a size"),
        ("SOVCLI_AUDIT", "maybe", "SOVCLI_AUDIT='maybe' is not a boolean"),
        ("SOVCLI_AUDIT_RETENTION_DAYS", "-3", "is not a whole number >= 0"),
    ],
)
def test_a_bad_audit_setting_is_a_usage_error(trail, monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    result = cli("import", "/nonexistent.gguf")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_replay_needs_a_record_address(trail, tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("{}\n")
    result = cli("audit", "replay", results)
    assert result.exit_code == 2
    assert "which record of" in result.stderr and "FILE:LINE" in result.stderr


@pytest.mark.slow  # loads the real model
def test_chat_writes_one_record_per_answer(trail, smollm2_model, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_CONTENT", "1")  # with content: the conversation is kept
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovcli",
            "chat",
            smollm2_model.ref,
            "--max-tokens",
            "6",
            "--temperature",
            "0",
        ],
        input="Say one.\nSay two.\n",
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "SOVCLI_NO_PROGRESS": "1"},
    )
    assert result.returncode == 0, result.stderr
    answers = [r for r in records(trail) if r["event"] == "chat"]
    assert len(answers) == 2
    first, second = answers
    assert first["model"] == smollm2_model.ref and first["model_digest"].startswith("sha256:")
    assert first["completion_tokens"] > 0 and first["finish_reason"] in ("stop", "length")
    assert first["prompt"][-1] == {"role": "user", "content": "Say one."}
    assert second["prompt"][-1] == {"role": "user", "content": "Say two."}
    assert second["prompt"][-2]["content"] == first["completion"]  # the conversation goes on
    assert first["completion"] in result.stdout


def _recorded_run(trail: Path, model) -> tuple[int, dict, str]:
    """A real `sovcli run` with content logging: (its line in the trail, record, stdout)."""
    answer = run_sovcli(
        "run",
        model.ref,
        "Name three colours.",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        env={"SOVCLI_AUDIT_CONTENT": "1"},
    )
    assert answer.returncode == 0, answer.stderr
    line = next(n for n, r in enumerate(records(trail), 1) if r["event"] == "run")
    record = records(trail)[line - 1]
    assert answer.stdout.rstrip("\n") == record["completion"].rstrip("\n")
    assert isinstance(record["reproducible"], bool) and record["context"] > 0
    assert record["stop"] == [] and record["params"]["temperature"] == 0
    return line, record, answer.stdout


@pytest.mark.slow  # loads the real model twice
def test_audit_replay_says_when_a_record_differs(trail, smollm2_model):
    line, record, _ = _recorded_run(trail, smollm2_model)
    lines = (trail / "audit.jsonl").read_text().splitlines(keepends=True)
    record["completion"] = "Something else entirely."
    lines[line - 1] = json.dumps(record) + "\n"
    (trail / "audit.jsonl").write_text("".join(lines))
    differs = run_sovcli("audit", "replay", f"{trail / 'audit.jsonl'}:{line}")
    assert differs.returncode == 7, differs.stderr
    assert differs.stderr.startswith(f"error: the replay of {trail / 'audit.jsonl'}:{line} differs")
    assert records(trail)[-1]["event"] == "replay" and records(trail)[-1]["matches"] is False
    assert f"audit.jsonl:{line}: edited" in run_sovcli("audit", "verify").stdout


@pytest.mark.slow  # loads the real model twice
def test_audit_replay_of_a_run_record_matches(trail, smollm2_model):
    line, _, _ = _recorded_run(trail, smollm2_model)
    replay = run_sovcli("audit", "replay", f"{trail / 'audit.jsonl'}:{line}")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith(f"match: {trail / 'audit.jsonl'}:{line} replays byte for byte")
    assert records(trail)[-1]["matches"] is True and records(trail)[-1]["record"] == line
