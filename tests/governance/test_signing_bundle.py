"""Signatures travel in air-gap bundles: `export` carries model.sig, `pull BUNDLE` keeps and
checks it, and a bundle altered in transit (a flipped byte, a rewritten manifest, a swapped
signature) is refused with nothing registered. The real SmolLM2 model, store A -> store B."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _sovcli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def signed_bundle(smollm2_model, site_keys, tmp_path: Path) -> Path:
    """Store A: the model signed with the site key and exported to a bundle."""
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    bundle = tmp_path / "smollm2.tar"
    exported = _sovcli("export", "smollm2-135m", "-o", bundle, "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["signature"] is True
    return bundle


@pytest.fixture
def store_b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Switch this test to an empty second store (the air-gapped machine)."""
    home = tmp_path / "store-b"
    monkeypatch.setenv("SOVCLI_HOME", str(home))
    return home


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _write_bundle(path: Path, members: dict[str, bytes]) -> Path:
    """A tar with `members` in order (the marker first), as an attacker would rebuild it."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _nothing_registered(home: Path) -> None:
    models = home / "models"
    assert not models.exists() or not any(models.rglob("*.gguf"))
    listed = _sovcli("list", "--json")
    assert json.loads(listed.stdout) == []


def _flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def _policy(tmp_path: Path, *trusted: Path) -> Path:
    keys = ", ".join(json.dumps(str(k)) for k in trusted)
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[signatures]\nrequire = true\ntrusted_keys = [{keys}]\n")
    return policy


def test_export_carries_the_signature_and_pull_keeps_it(signed_bundle, store_b, site_keys):
    members = _members(signed_bundle)
    assert next(iter(members)) == "sovcli-bundle.json" and "model.sig" in members
    pulled = _sovcli("pull", signed_bundle)
    assert pulled.exit_code == 0, pulled.output
    kept = store_b / "models" / "smollm2-135m" / "Q4_1" / "model.sig"
    assert kept.read_bytes() == members["model.sig"]
    checked = _sovcli("verify", "smollm2-135m", "--key", site_keys.public, "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)[0]["signature"]["state"] == "ok"


def test_unsigned_model_exports_without_a_signature(smollm2_model, tmp_path, monkeypatch):
    bundle = tmp_path / "plain.tar"
    exported = _sovcli("export", "smollm2-135m", "-o", bundle, "--json")
    assert exported.exit_code == 0 and json.loads(exported.stdout)["signature"] is False
    assert "model.sig" not in _members(bundle)
    monkeypatch.setenv("SOVCLI_HOME", str(tmp_path / "store-b"))
    assert _sovcli("pull", bundle).exit_code == 0
    assert "signature absent" in _sovcli("verify", "smollm2-135m").stdout


def test_flipped_byte_in_the_gguf_is_refused(signed_bundle, store_b, tmp_path):
    members = _members(signed_bundle)
    members[GGUF] = _flipped(members[GGUF], 4_000_000)
    result = _sovcli("pull", _write_bundle(tmp_path / "flipped.tar", members))
    assert result.exit_code == 7
    assert f"bundle file {GGUF} does not match its manifest" in result.stderr
    _nothing_registered(store_b)


def test_flipped_byte_with_a_rewritten_manifest_is_caught_by_the_signature(
    signed_bundle, store_b, tmp_path
):
    """The attacker recomputes the manifest's hash (and renames the model, so that no
    catalog pin applies): only the signature can tell."""
    import hashlib

    members = _members(signed_bundle)
    members[GGUF] = _flipped(members[GGUF], 4_000_000)
    marker = json.loads(members["sovcli-bundle.json"])
    marker["manifest"]["name"] = "bank-assistant"
    marker["manifest"]["files"][0]["sha256"] = hashlib.sha256(members[GGUF]).hexdigest()
    members["sovcli-bundle.json"] = json.dumps(marker).encode()
    result = _sovcli("pull", _write_bundle(tmp_path / "forged.tar", members))
    assert result.exit_code == 7
    assert "its signature does not match the model" in result.stderr
    assert f"{GGUF} differs from the signed file" in result.stderr
    _nothing_registered(store_b)


def test_signature_of_other_files_is_refused(signed_bundle, store_b, site_keys, tmp_path):
    """A genuine signature by the trusted key, taken from another model."""
    from sovcli.governance.oms import key_signer, sign_files

    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.gguf").write_bytes(b"GGUF something else")
    signer, _who = key_signer(site_keys.private, None, None, [])
    sign_files(other, ["weights.gguf"], signer, other / "model.sig")
    members = _members(signed_bundle)
    members["model.sig"] = (other / "model.sig").read_bytes()
    result = _sovcli("pull", _write_bundle(tmp_path / "swapped.tar", members))
    assert result.exit_code == 7
    assert f"{GGUF} is not covered by the signature" in result.stderr
    _nothing_registered(store_b)


def test_swapped_signature_is_refused_under_a_policy_that_trusts_the_site_key(
    signed_bundle, store_b, site_keys, rogue_keys, tmp_path, monkeypatch
):
    from sovcli.governance.oms import key_signer, sign_files

    members = _members(signed_bundle)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / GGUF).write_bytes(members[GGUF])
    signer, _who = key_signer(rogue_keys.private, None, None, [])
    sign_files(staged, [GGUF], signer, staged / "model.sig")
    members["model.sig"] = (staged / "model.sig").read_bytes()
    swapped = _write_bundle(tmp_path / "swapped.tar", members)

    monkeypatch.setenv("SOVCLI_POLICY", str(_policy(tmp_path, site_keys.public)))
    result = _sovcli("pull", swapped)
    assert result.exit_code == 11, result.output
    assert "rule signatures.require" in result.stderr and "untrusted" in result.stderr
    _nothing_registered(store_b)
    # the genuine bundle passes the same policy
    assert _sovcli("pull", signed_bundle).exit_code == 0


@pytest.mark.parametrize("kind", ["directory", "symlink", "oversized"])
def test_hostile_signature_member_is_refused(signed_bundle, store_b, tmp_path, kind):
    from sovcli.governance.oms import MAX_SIGNATURE_BYTES

    members = _members(signed_bundle)
    del members["model.sig"]
    path = tmp_path / f"{kind}.tar"
    _write_bundle(path, members)
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("model.sig")
        if kind == "directory":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = MAX_SIGNATURE_BYTES + 1
            tar.addfile(info, io.BytesIO(b"{" * info.size))
    result = _sovcli("pull", path)
    assert result.exit_code == 7, result.output
    assert "model.sig is not a regular file" in result.stderr
    _nothing_registered(store_b)
