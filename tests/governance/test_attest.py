"""`sovcli attest MODEL -o DIR`: the evidence pack an auditor gets, from the real model."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()


def _sovcli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_evidence_pack_holds_everything_and_checks_out(smollm2_model, site_keys, tmp_path):
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    pack = tmp_path / "evidence"
    result = _sovcli("attest", "smollm2-135m", "-o", pack, "--key", site_keys.public, "--json")
    assert result.exit_code == 0, result.output
    names = {p.name for p in pack.iterdir()}
    assert names == {
        "summary.md", "manifest.json", "model.sig", "verification.json", "sbom.json",
        "policy.json", "audit.json", "versions.json", "SHA256SUMS",
    }  # fmt: skip
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=pack, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert (pack / "manifest.json").read_bytes() == (
        smollm2_model.directory / "manifest.json"
    ).read_bytes()
    assert (pack / "model.sig").read_bytes() == (smollm2_model.directory / "model.sig").read_bytes()

    verification = json.loads((pack / "verification.json").read_text())
    assert verification["files_ok"] is True
    assert verification["signature"]["state"] == "ok"
    assert verification["trust_anchors"]["public_keys"] == [str(site_keys.public)]
    assert (
        JsonStrictValidator(SchemaVersion.V1_6).validate_str((pack / "sbom.json").read_text())
        is None
    )
    assert json.loads((pack / "policy.json").read_text())["in_force"] is False
    audit = json.loads((pack / "audit.json").read_text())
    assert audit["verified"] is True and audit["events"].get("sign") == 1
    assert audit["head"]["hash"].startswith("sha256:")
    versions = json.loads((pack / "versions.json").read_text())
    assert versions["sovcli"] and versions["llama_cpp_python"] and versions["model_signing"]

    summary = (pack / "summary.md").read_text()
    assert summary.startswith("# Evidence pack: smollm2-135m:Q4_1")
    assert verification["model_digest"] in summary
    assert "State: **ok**" in summary and "No policy in force" in summary
    assert audit["head"]["hash"] in summary


def test_policy_in_force_is_copied_with_its_hash_and_its_anchors_used(
    smollm2_model, site_keys, tmp_path, monkeypatch
):
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[signatures]\nrequire = true\ntrusted_keys = ["{site_keys.public}"]\n'
        '[licenses]\nallow = ["apache-2.0"]\n'
    )
    monkeypatch.setenv("SOVCLI_POLICY", str(policy))
    pack = tmp_path / "evidence"
    assert _sovcli("attest", "smollm2-135m", "-o", pack).exit_code == 0
    described = json.loads((pack / "policy.json").read_text())
    assert described["in_force"] is True and described["path"] == str(policy)
    assert (
        described["sha256"].removeprefix("sha256:")
        == hashlib.sha256(policy.read_bytes()).hexdigest()
    )
    assert (pack / "policy.toml").read_bytes() == policy.read_bytes()
    verification = json.loads((pack / "verification.json").read_text())
    assert verification["signature"]["state"] == "ok"  # the policy's trusted key
    assert described["sha256"] in (pack / "summary.md").read_text()


def test_refuses_a_folder_that_is_not_empty_and_accepts_an_empty_one(smollm2_model, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    refused = _sovcli("attest", "smollm2-135m", "-o", busy)
    assert refused.exit_code == 2
    assert "is not an empty folder" in refused.stderr and "hint:" in refused.stderr
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _sovcli("attest", "smollm2-135m", "-o", a_file).exit_code == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _sovcli("attest", "smollm2-135m", "-o", empty).exit_code == 0
    assert (empty / "summary.md").is_file()
    assert not (empty / "model.sig").exists()


def test_a_failed_write_leaves_no_folder_and_no_partial(tmp_path):
    from sovcli.errors import StoreError
    from sovcli.governance.attest import write_pack

    out = tmp_path / "evidence"
    with pytest.raises(StoreError):
        write_pack({"summary.md": b"ok", "no/such/dir.json": b"{}"}, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_attest_tells_when_the_files_fail(smollm2_copy, tmp_path):
    with smollm2_copy.gguf_path.open("r+b") as fh:
        fh.seek(2_000_000)
        fh.write(b"\x00\x01\x02")
    pack = tmp_path / "evidence"
    assert _sovcli("attest", "smollm2-135m", "-o", pack).exit_code == 0  # evidence, not a gate
    verification = json.loads((pack / "verification.json").read_text())
    assert verification["files_ok"] is False
    assert verification["files"][0]["status"] == "sha256"
    assert "**Files FAIL.**" in (pack / "summary.md").read_text()
