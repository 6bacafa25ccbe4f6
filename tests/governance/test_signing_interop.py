"""Interoperability with the OpenSSF `model_signing` CLI, both ways, on the same store folder:
a signature sovcli makes verifies with `model_signing verify`, and one `model_signing sign`
makes verifies in `sovcli verify` (own key pair and own PKI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

pytestmark = pytest.mark.slow  # the model_signing CLI in subprocesses: seconds each
runner = CliRunner()


def _oms(*args: object) -> subprocess.CompletedProcess[str]:
    """The `model_signing` command line (the library's own CLI) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _sign_with(key: Path) -> int:
    return runner.invoke(app, ["sign", "smollm2-135m", "--key", str(key)]).exit_code


def _verify_json(*args: object) -> tuple[int, dict]:
    result = runner.invoke(app, ["verify", "smollm2-135m", "--json", *map(str, args)])
    return result.exit_code, json.loads(result.stdout)[0]["signature"]


def test_sovcli_key_signature_verifies_with_the_model_signing_cli(smollm2_model, site_keys):
    folder = smollm2_model.directory
    signed = runner.invoke(app, ["sign", "smollm2-135m", "--key", str(site_keys.private)])
    assert signed.exit_code == 0, signed.output
    result = _oms(
        "verify", "key", folder, "--signature", folder / "model.sig",
        "--public_key", site_keys.public,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout


def test_sovcli_certificate_signature_verifies_with_the_model_signing_cli(smollm2_model, site_pki):
    folder = smollm2_model.directory
    signed = runner.invoke(
        app,
        [
            "sign", "smollm2-135m", "--key", str(site_pki.leaf_key),
            "--cert", str(site_pki.leaf_cert), "--chain", str(site_pki.chain),
        ],
    )  # fmt: skip
    assert signed.exit_code == 0, signed.output
    result = _oms(
        "verify", "certificate", folder, "--signature", folder / "model.sig",
        "--certificate_chain", site_pki.root_cert,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout


def test_model_signing_cli_key_signature_verifies_in_sovcli(smollm2_model, site_keys, rogue_keys):
    """The CLI's defaults (it also covers manifest.json, which sovcli rebuilds on import and
    so leaves to the manifest's own hash check)."""
    folder = smollm2_model.directory
    made = _oms(
        "sign", "key", folder, "--signature", folder / "model.sig",
        "--private_key", site_keys.private,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    code, signature = _verify_json("--key", site_keys.public)
    assert code == 0 and signature["state"] == "ok", signature
    code, signature = _verify_json("--key", rogue_keys.public)
    assert code == 7 and signature["state"] == "untrusted"


def test_model_signing_cli_certificate_signature_verifies_in_sovcli(smollm2_model, site_pki):
    folder = smollm2_model.directory
    made = _oms(
        "sign", "certificate", folder, "--signature", folder / "model.sig",
        "--private_key", site_pki.leaf_key, "--signing_certificate", site_pki.leaf_cert,
        "--certificate_chain", site_pki.chain, "--ignore-paths", folder / "manifest.json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    code, signature = _verify_json("--ca", site_pki.root_cert)
    assert code == 0 and signature["state"] == "ok", signature
    assert signature["signer"] == site_pki.subject


def test_both_tools_refuse_the_same_tampered_file(smollm2_copy, site_keys):
    folder = smollm2_copy.directory
    assert _sign_with(site_keys.private) == 0
    with smollm2_copy.gguf_path.open("r+b") as fh:
        fh.seek(12_345_678)
        byte = fh.read(1)
        fh.seek(12_345_678)
        fh.write(bytes([byte[0] ^ 1]))
    result = _oms(
        "verify", "key", folder, "--signature", folder / "model.sig",
        "--public_key", site_keys.public,
    )  # fmt: skip
    assert result.returncode != 0
    assert smollm2_copy.gguf_path.name in result.stderr
    code, signature = _verify_json("--key", site_keys.public)
    assert code == 7 and signature["state"] == "invalid"
    assert signature["detail"].startswith(smollm2_copy.gguf_path.name)


def test_sovcli_signature_leaves_no_stray_file_for_the_cli_to_trip_on(smollm2_model, site_keys):
    """The CLI hashes every file in the folder: signing must leave only the signature."""
    before = {p.name for p in Path(smollm2_model.directory).iterdir()}
    assert _sign_with(site_keys.private) == 0
    after = {p.name for p in Path(smollm2_model.directory).iterdir()}
    assert after - before == {"model.sig"}


@pytest.mark.parametrize("serialization", ["shards-sha256", "files-blake3"])
def test_oms_signatures_per_shard_or_blake3_verify_in_sovcli(
    smollm2_copy, site_keys, serialization
):
    """The OMS library's other hashings: 16 MB shards (sha256), or whole files with blake3."""
    from model_signing import hashing, signing

    folder = smollm2_copy.directory
    config = hashing.Config()
    if serialization == "shards-sha256":
        config.use_shard_serialization(shard_size=16_000_000)
    else:
        config.use_file_serialization(hashing_algorithm="blake3")
    config.set_ignored_paths(paths=[Path("manifest.json"), Path("model.sig")])
    signing.Config().use_elliptic_key_signer(private_key=site_keys.private).set_hashing_config(
        config
    ).sign(folder, folder / "model.sig")
    code, signature = _verify_json("--key", site_keys.public)
    assert code == 0 and signature["state"] == "ok", signature

    with smollm2_copy.gguf_path.open("r+b") as fh:
        fh.seek(40_000_000)
        byte = fh.read(1)
        fh.seek(40_000_000)
        fh.write(bytes([byte[0] ^ 1]))
    code, signature = _verify_json("--key", site_keys.public)
    assert code == 7 and signature["state"] == "invalid"
    assert signature["detail"].startswith(f"{smollm2_copy.gguf_path.name} differs")
