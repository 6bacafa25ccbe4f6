"""`sovcli sign` and the signature part of `sovcli verify`, on the real SmolLM2 model:
ok / absent / invalid (naming the file) / untrusted, own key pair and own PKI, and hostile
signature files and options (one-line errors, no traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

from .conftest import make_pki

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
runner = CliRunner()


def _sovcli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _signature_of(result) -> dict:
    return json.loads(result.stdout)[0]["signature"]


def test_sign_then_verify_ok_with_the_public_key(smollm2_model, site_keys) -> None:
    signed = _sovcli("sign", "smollm2-135m", "--key", site_keys.private, "--json")
    assert signed.exit_code == 0, signed.output
    info = json.loads(signed.stdout)
    assert info["method"] == "key" and info["signer"].startswith("sha256:")
    assert info["files"] == [GGUF]
    assert (smollm2_model.directory / "model.sig").is_file()

    checked = _sovcli("verify", "smollm2-135m", "--key", site_keys.public)
    assert checked.exit_code == 0, checked.output
    assert f"smollm2-135m:Q4_1  {GGUF}  ok" in checked.stdout
    assert f"signature ok (by {info['signer']}" in checked.stdout

    as_json = _sovcli("verify", "smollm2-135m", "--key", site_keys.public, "--json")
    signature = _signature_of(as_json)
    assert signature["state"] == "ok" and signature["signer"] == info["signer"]


def test_signature_with_no_trust_anchor_is_untrusted_never_ok(smollm2_model, site_keys) -> None:
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    result = _sovcli("verify", "--json")
    assert result.exit_code == 0, result.output  # nothing asked to be trusted: reported only
    signature = _signature_of(result)
    assert signature["state"] == "untrusted"
    assert "no trust anchor" in signature["detail"]


def test_signature_by_another_key_is_untrusted_and_fails_verify(
    smollm2_model, site_keys, rogue_keys
) -> None:
    assert _sovcli("sign", "smollm2-135m", "--key", rogue_keys.private).exit_code == 0
    result = _sovcli("verify", "smollm2-135m", "--key", site_keys.public)
    assert result.exit_code == 7
    assert "signature UNTRUSTED" in result.stdout
    assert "not among the trust anchors" in result.stdout
    assert "error: smollm2-135m:Q4_1: signature untrusted" in result.stderr
    assert "Traceback" not in result.output


def test_absent_signature_is_reported_and_fails_only_when_a_key_is_given(
    smollm2_model, site_keys
) -> None:
    plain = _sovcli("verify", "smollm2-135m")
    assert plain.exit_code == 0 and "signature absent" in plain.stdout
    strict = _sovcli("verify", "smollm2-135m", "--key", site_keys.public)
    assert strict.exit_code == 7 and "signature absent" in strict.stderr


def test_one_flipped_byte_makes_verify_name_the_file(smollm2_copy, site_keys) -> None:
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    _flip_byte(smollm2_copy.gguf_path, 5_000_000)
    result = _sovcli("verify", "smollm2-135m", "--key", site_keys.public, "--json")
    assert result.exit_code == 7
    signature = _signature_of(result)
    assert signature["state"] == "invalid"
    assert signature["detail"].startswith(f"{GGUF} differs from the signed file")
    text = _sovcli("verify", "smollm2-135m", "--key", site_keys.public)
    assert f"signature INVALID (by {signature['signer']}; {GGUF} differs" in text.stdout


def test_signature_catches_a_tampered_file_whose_manifest_was_rewritten(
    smollm2_copy, site_keys
) -> None:
    """The manifest's hashes are not signed: an attacker who changes a file and rewrites
    manifest.json passes the hash check, and the signature still names the file."""
    from sovcli.store.hashing import sha256_file

    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    _flip_byte(smollm2_copy.gguf_path, 1_000_000)
    manifest_path = smollm2_copy.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = sha256_file(smollm2_copy.gguf_path)
    manifest_path.write_text(json.dumps(manifest))

    result = _sovcli("verify", "smollm2-135m", "--key", site_keys.public, "--json")
    assert result.exit_code == 7
    report = json.loads(result.stdout)[0]
    assert report["ok"] is True  # the hashes agree with the rewritten manifest...
    assert report["signature"]["state"] == "invalid"  # ...the signature does not
    assert GGUF in report["signature"]["detail"]
    # without a trusted key too: the signed digests are checked whoever signed
    unanchored = _signature_of(_sovcli("verify", "smollm2-135m", "--json"))
    assert unanchored["state"] == "invalid" and GGUF in unanchored["detail"]


def test_signature_from_another_model_does_not_cover_this_one(
    smollm2_model, site_keys, tmp_path: Path
) -> None:
    """A valid signature by the trusted key, but over other files: invalid, not ok."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.gguf").write_bytes(b"GGUF other weights")
    from sovcli.governance.oms import key_signer, sign_files

    signer, _who = key_signer(site_keys.private, None, None, [])
    sign_files(other, ["weights.gguf"], signer, smollm2_model.directory / "model.sig")
    result = _sovcli("verify", "smollm2-135m", "--key", site_keys.public, "--json")
    assert result.exit_code == 7
    signature = _signature_of(result)
    assert signature["state"] == "invalid"
    assert signature["detail"] == f"{GGUF} is not covered by the signature"


def test_own_pki_certificate_chain(smollm2_model, site_pki, tmp_path: Path) -> None:
    signed = _sovcli(
        "sign",
        "smollm2-135m",
        "--key",
        site_pki.leaf_key,
        "--cert",
        site_pki.leaf_cert,
        "--chain",
        site_pki.chain,
        "--json",
    )
    assert signed.exit_code == 0, signed.output
    assert json.loads(signed.stdout)["signer"] == site_pki.subject

    trusted = _sovcli("verify", "smollm2-135m", "--ca", site_pki.root_cert, "--json")
    assert trusted.exit_code == 0, trusted.output
    signature = _signature_of(trusted)
    assert signature["state"] == "ok" and signature["method"] == "certificate"
    assert signature["signer"] == site_pki.subject

    other_ca = make_pki(tmp_path / "other-pki")
    refused = _sovcli("verify", "smollm2-135m", "--ca", other_ca.root_cert, "--json")
    assert refused.exit_code == 7
    assert _signature_of(refused)["state"] == "untrusted"
    assert "does not chain to a trusted CA" in _signature_of(refused)["detail"]


def test_certificate_that_is_not_the_keys_is_refused(smollm2_model, site_pki, site_keys) -> None:
    result = _sovcli(
        "sign", "smollm2-135m", "--key", site_keys.private, "--cert", site_pki.leaf_cert
    )
    assert result.exit_code == 2
    assert "does not match" in result.stderr
    assert not (smollm2_model.directory / "model.sig").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json at all",
        b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}',
        b'{"verificationMaterial": {"publicKey": {"hint": "00"}}, "dsseEnvelope": '
        b'{"payload": "bm90IGpzb24=", "payloadType": "application/vnd.in-toto+json", '
        b'"signatures": [{"sig": "AA==", "keyid": ""}]}, '
        b'"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}',
        b"[" * 100_000,
        b"\xff\xfe\x00garbage",
    ],
    ids=["empty", "text", "no-envelope", "payload-not-json", "deep-nesting", "binary"],
)
def test_hostile_signature_file_is_invalid_in_one_line(smollm2_model, site_keys, content) -> None:
    (smollm2_model.directory / "model.sig").write_bytes(content)
    result = _sovcli("verify", "smollm2-135m", "--json")
    assert result.exit_code == 7
    signature = _signature_of(result)
    assert signature["state"] == "invalid"
    assert "\n" not in signature["detail"] and len(signature["detail"]) < 400
    assert "Traceback" not in result.output


def test_oversized_signature_file_is_not_read(smollm2_model) -> None:
    from sovcli.governance.oms import MAX_SIGNATURE_BYTES

    with (smollm2_model.directory / "model.sig").open("wb") as fh:
        fh.truncate(MAX_SIGNATURE_BYTES + 1)  # sparse: nothing is written
    signature = _signature_of(_sovcli("verify", "smollm2-135m", "--json"))
    assert signature["state"] == "invalid" and "at most" in signature["detail"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give one of --key KEY.pem or --pkcs11-uri URI"),
        (["--key", "K", "--pkcs11-uri", "pkcs11:token=x"], "give one of"),
        (["--key", "K", "--chain", "C"], "--chain needs --cert"),
    ],
)
def test_sign_option_mistakes(smollm2_model, extra, message) -> None:
    result = _sovcli("sign", "smollm2-135m", *extra)
    assert result.exit_code == 2
    assert message in result.stderr


def test_sign_with_unusable_keys_says_why(smollm2_model, site_keys, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for key in (site_keys.public, rsa_key, tmp_path / "missing.pem"):
        result = _sovcli("sign", "smollm2-135m", "--key", key)
        assert result.exit_code == 2, result.output
        assert "error: cannot " in result.stderr
        assert "Traceback" not in result.output
    assert not (smollm2_model.directory / "model.sig").exists()


def test_sign_with_a_password_protected_key(smollm2_model, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    public = tmp_path / "enc.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    right = tmp_path / "right"
    right.write_text("s3cret\n")
    assert _sovcli("sign", "smollm2-135m", "--key", encrypted).exit_code == 2
    assert _sovcli("sign", "smollm2-135m", "--key", encrypted, "--password-file", wrong).exit_code
    result = _sovcli("sign", "smollm2-135m", "--key", encrypted, "--password-file", right)
    assert result.exit_code == 0, result.output
    assert _sovcli("verify", "smollm2-135m", "--key", public).exit_code == 0


def test_a_gguf_outside_the_store_is_not_signed(smollm2_gguf, site_keys) -> None:
    result = _sovcli("sign", smollm2_gguf, "--key", site_keys.private)
    assert result.exit_code == 2
    assert "outside the store" in result.stderr


def test_pkcs11_without_pykcs11_is_a_clear_error(smollm2_model, sovcli_cli, tmp_path) -> None:
    """model-signing's pkcs11 extra missing: one line saying what to install."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "PyKCS11.py").write_text("raise ImportError('blocked for this test')\n")
    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    result = sovcli_cli(
        "sign", "smollm2-135m", "--pkcs11-uri", "pkcs11:token=t;object=k", env={"PYTHONPATH": path}
    )
    assert result.returncode == 2, result.stderr
    assert "needs the PyKCS11 module" in result.stderr
    assert "sovcli[pkcs11]" in result.stderr
    assert "Traceback" not in result.stderr


def test_sign_is_recorded_in_the_audit_trail(smollm2_model, site_keys) -> None:
    from sovcli.governance.audit import chain_summary
    from sovcli.governance.identity import model_digest

    signed = _sovcli("sign", "smollm2-135m", "--key", site_keys.private, "--json")
    assert signed.exit_code == 0, signed.output
    summary = chain_summary(model_digest(smollm2_model))
    assert summary["verified"] is True
    assert summary["events"].get("sign") == 1


def test_hostile_shard_size_is_refused_before_any_hashing(smollm2_model, rogue_keys, tmp_path):
    """A signature that asks for 1-byte shards of a 98 MB file (98 million hashes) is judged
    by its shard count first."""
    from model_signing import hashing, signing

    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / GGUF).write_bytes(b"0123456789")
    config = hashing.Config().use_shard_serialization(shard_size=1)
    signing.Config().use_elliptic_key_signer(private_key=rogue_keys.private).set_hashing_config(
        config
    ).sign(decoy, decoy / "model.sig")
    (smollm2_model.directory / "model.sig").write_bytes((decoy / "model.sig").read_bytes())
    signature = _signature_of(_sovcli("verify", "smollm2-135m", "--json"))
    assert signature["state"] == "invalid"
    assert signature["detail"] == f"{GGUF} differs from the signed file (its size or shards differ)"


def test_verify_uses_the_site_policys_trust_anchors(
    smollm2_model, site_keys, tmp_path, monkeypatch
):
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[signatures]\ntrusted_keys = ["{site_keys.public}"]\n')
    monkeypatch.setenv("SOVCLI_POLICY", str(policy))
    signature = _signature_of(_sovcli("verify", "smollm2-135m", "--json"))
    assert signature["state"] == "ok"
    policy.write_text("[signatures]\ntrusted_keys = 7\n")  # malformed: fail closed
    broken = _sovcli("verify", "smollm2-135m")
    assert broken.exit_code == 12 and str(policy) in broken.stderr
