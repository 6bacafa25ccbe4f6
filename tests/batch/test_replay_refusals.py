"""`sovcli audit replay` refuses what would make the comparison meaningless, before loading
any model: another model under the recorded name, a prompt that does not hash to the
recorded one, a document changed since, a record of a failure or of a remote endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Explain to a new employee what {name} says, in a few sentences:\n\n{text}"


def sovcli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args], capture_output=True, text=True, env=env
    )


def _one_record(tmp_path: Path, installed) -> tuple[Path, dict]:
    """A results record as `batch` writes it, for a one-document folder (no model run)."""
    from sovcli.batch.backends import GenerationSettings
    from sovcli.batch.journal import path_fields
    from sovcli.batch.prompt import PromptTemplate
    from sovcli.batch.runner import BatchJob
    from sovcli.store.hashing import sha256_file

    docs = tmp_path / "one"
    docs.mkdir()
    (docs / "memo.txt").write_text("The audit starts on Monday.", encoding="utf-8")
    model = {"ref": installed.ref, "manifest_sha256": installed.manifest_sha256}
    job = BatchJob(docs, tmp_path / "r.jsonl", PromptTemplate(PROMPT), GenerationSettings(), model)
    record = {
        **path_fields("memo.txt"),
        "sha256": sha256_file(docs / "memo.txt"),
        "model": model,
        "prompt_sha256": job.template.sha256,
        "params": job.params,
        "params_sha256": job.params_sha256,
        "reproducible": True,
        "replay": job.replay_fields,
        "status": "ok",
        "output": "Monday.",
    }
    return docs, record


def _replay_of(tmp_path: Path, record: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "record.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return sovcli("audit", "replay", f"{path}:1")


def test_replay_refuses_another_model_a_changed_document_or_prompt(tmp_path, installed_smollm2):
    docs, record = _one_record(tmp_path, installed_smollm2)
    other = dict(record, model=dict(record["model"], manifest_sha256="0" * 64))
    done = _replay_of(tmp_path, other)
    assert done.returncode == 7 and "is not the model of" in done.stderr, done.stderr

    bad_prompt = dict(record, replay=dict(record["replay"], prompt="Say yes: {text}"))
    done = _replay_of(tmp_path, bad_prompt)
    assert done.returncode == 7 and "prompt_sha256" in done.stderr, done.stderr

    (docs / "memo.txt").write_text("The audit starts on Tuesday.", encoding="utf-8")
    done = _replay_of(tmp_path, record)
    assert done.returncode == 7 and "changed since" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_replay_refuses_failures_remote_records_and_unknown_lines(tmp_path, installed_smollm2):
    _, record = _one_record(tmp_path, installed_smollm2)
    done = _replay_of(tmp_path, dict(record, status="error", error="timeout"))
    assert done.returncode == 2 and "records a failure" in done.stderr, done.stderr
    done = _replay_of(tmp_path, dict(record, model={"ref": "x", "remote": True}))
    assert done.returncode == 2 and "remote endpoint" in done.stderr, done.stderr
    done = sovcli("audit", "replay", f"{tmp_path / 'record.jsonl'}:9")
    assert done.returncode == 2 and "there is no line 9" in done.stderr, done.stderr
    (tmp_path / "junk.jsonl").write_text("not json\n", encoding="utf-8")
    done = sovcli("audit", "replay", f"{tmp_path / 'junk.jsonl'}:1")
    assert done.returncode == 2 and "not a JSON record" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
