"""Signing with a key that never leaves a PKCS#11 token (an HSM), through model-signing's
pkcs11 extra, against a real SoftHSM2 token (Debian `softhsm2` + `opensc`'s pkcs11-tool)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SOFTHSM.is_file() and shutil.which("softhsm2-util") and shutil.which("pkcs11-tool")),
        reason="needs SoftHSM2 and pkcs11-tool (apt-get install softhsm2 opensc)",
    ),
]
pytest.importorskip("PyKCS11", reason="needs the pkcs11 extra (PyKCS11)")


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path | str]:
    """A fresh SoftHSM2 token "sovcli" holding the EC P-256 key "model-key" (PIN in a file)."""
    from cryptography.hazmat.primitives import serialization

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    pin = tmp_path / "pin"
    pin.write_text("1234")

    def run(*args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    run("softhsm2-util", "--init-token", "--free", "--label", "sovcli", "--pin", "1234",
        "--so-pin", "5678")  # fmt: skip
    tool = ["pkcs11-tool", "--module", str(SOFTHSM), "--token-label", "sovcli"]
    run(*tool, "--login", "--pin", "1234", "--keypairgen", "--key-type", "EC:prime256v1",
        "--label", "model-key", "--id", "01")  # fmt: skip
    der = tmp_path / "public.der"
    run(*tool, "--read-object", "--type", "pubkey", "--label", "model-key", "-o", str(der))
    public = tmp_path / "public.pem"
    key = serialization.load_der_public_key(der.read_bytes())
    public.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    uri = f"pkcs11:token=sovcli;object=model-key?module-path={SOFTHSM}&pin-source=file:{pin}"
    return {"uri": uri, "public": public}


def test_sign_with_a_softhsm_key_then_verify(smollm2_model, token, sovcli_cli) -> None:
    signed = sovcli_cli("sign", "smollm2-135m", "--pkcs11-uri", token["uri"], "--json")
    assert signed.returncode == 0, signed.stderr
    info = json.loads(signed.stdout)
    assert info["method"] == "pkcs11" and info["signer"].startswith("sha256:")

    checked = sovcli_cli("verify", "smollm2-135m", "--key", token["public"], "--json")
    assert checked.returncode == 0, checked.stderr
    signature = json.loads(checked.stdout)[0]["signature"]
    assert signature["state"] == "ok" and signature["signer"] == info["signer"]


def test_wrong_pin_or_object_is_one_line(smollm2_model, token, sovcli_cli, tmp_path) -> None:
    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("0000")
    bad_uris = [
        str(token["uri"]).replace(
            f"pin-source=file:{tmp_path / 'pin'}", f"pin-source=file:{wrong_pin}"
        ),
        str(token["uri"]).replace("object=model-key", "object=no-such-key"),
    ]
    for uri in bad_uris:
        result = sovcli_cli("sign", "smollm2-135m", "--pkcs11-uri", uri)
        assert result.returncode == 2, result.stderr
        assert "error: cannot use the PKCS#11 key" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (smollm2_model.directory / "model.sig").exists()
