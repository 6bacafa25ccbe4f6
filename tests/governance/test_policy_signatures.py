"""`[signatures] require = true`: only models signed by a trust anchor of the policy run.

Signatures are made with `sovcli sign` (the OMS format, model-signing) by the site's key,
by a key the site does not trust, and by a certificate of the site's PKI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .policy_support import env_for, one_error_line, write_policy

MODEL = "smollm2-135m:Q4_1"


def key_policy(folder: Path, public: Path, extra: str = "") -> Path:
    """A policy requiring a signature by the key `public`."""
    return write_policy(
        folder, f'[signatures]\nrequire = true\ntrusted_keys = ["{public}"]\n{extra}'
    )


def signature_verdict(sovcli_cli, policy: Path, action: str = "run") -> tuple[int, dict]:
    """(exit code, the signatures.require verdict) of `policy check MODEL`."""
    done = sovcli_cli("policy", "check", MODEL, "--json", "--action", action, env=env_for(policy))
    report = json.loads(done.stdout)
    return done.returncode, next(v for v in report["verdicts"] if v["rule"] == "signatures.require")


def sign(sovcli_cli, *args: str | Path, env: dict | None = None) -> None:
    done = sovcli_cli("sign", MODEL, *args, "-q", env=env)
    assert done.returncode == 0, done.stderr


def test_an_unsigned_model_is_refused(sovcli_cli, smollm2_model, tmp_path, site_keys) -> None:
    policy = key_policy(tmp_path, site_keys.public)
    code, verdict = signature_verdict(sovcli_cli, policy)
    assert code == 11 and verdict["verdict"] == "deny"
    assert "no valid signature from a trusted key (absent" in verdict["reason"]
    done = sovcli_cli("run", MODEL, "hello", env=env_for(policy))
    assert done.returncode == 11 and done.stdout == ""
    assert one_error_line(done.stderr).startswith(
        f"error: policy {policy} denies run of {MODEL}: rule signatures.require: "
        "no valid signature from a trusted key"
    )


def test_signing_is_allowed_under_the_rule_and_then_the_model_is(
    sovcli_cli, smollm2_model, tmp_path: Path, site_keys
) -> None:
    policy = key_policy(tmp_path, site_keys.public, '[models]\nallow = ["smollm2-135m"]\n')
    sign(sovcli_cli, "--key", site_keys.private, env=env_for(policy))
    code, verdict = signature_verdict(sovcli_cli, policy)
    assert code == 0 and verdict["verdict"] == "allow", verdict
    bundle = tmp_path / "signed.tar"
    done = sovcli_cli("export", MODEL, "-o", bundle, "-q", env=env_for(policy))
    assert done.returncode == 0, done.stderr


def test_the_models_rule_still_applies_to_signing(
    sovcli_cli, smollm2_model, tmp_path: Path, site_keys
) -> None:
    policy = key_policy(tmp_path, site_keys.public, '[models]\nallow = ["other"]\n')
    done = sovcli_cli("sign", MODEL, "--key", site_keys.private, env=env_for(policy))
    assert done.returncode == 11 and "denies sign of" in one_error_line(done.stderr)
    assert not (smollm2_model.directory / "model.sig").exists()


def test_a_signature_by_an_untrusted_key_is_refused(
    sovcli_cli, smollm2_model, tmp_path: Path, site_keys, rogue_keys
) -> None:
    sign(sovcli_cli, "--key", rogue_keys.private)
    policy = key_policy(tmp_path, site_keys.public)
    code, verdict = signature_verdict(sovcli_cli, policy, "serve")
    assert code == 11 and "(untrusted" in verdict["reason"]
    done = sovcli_cli("serve", MODEL, "--port", "0", env=env_for(policy))
    assert done.returncode == 11 and "serving" not in done.stderr
    assert "rule signatures.require" in one_error_line(done.stderr)


def test_a_model_changed_after_signing_is_refused(
    sovcli_cli, smollm2_copy, tmp_path: Path, site_keys
) -> None:
    sign(sovcli_cli, "--key", site_keys.private)
    policy = key_policy(tmp_path, site_keys.public)
    assert signature_verdict(sovcli_cli, policy)[0] == 0
    with smollm2_copy.gguf_path.open("r+b") as fh:
        fh.seek(50_000_000)
        byte = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    code, verdict = signature_verdict(sovcli_cli, policy, "batch")
    assert code == 11 and "(invalid" in verdict["reason"]
    assert smollm2_copy.gguf_path.name in verdict["reason"]


def test_a_certificate_chaining_to_a_trusted_ca_is_accepted(
    sovcli_cli, smollm2_model, tmp_path: Path, site_pki
) -> None:
    from .conftest import make_pki

    sign(
        sovcli_cli,
        "--key", site_pki.leaf_key, "--cert", site_pki.leaf_cert, "--chain", site_pki.chain,
    )  # fmt: skip
    trusted = write_policy(
        tmp_path / "t", f'[signatures]\nrequire = true\ntrusted_cas = ["{site_pki.root_cert}"]\n'
    )
    code, verdict = signature_verdict(sovcli_cli, trusted)
    assert code == 0 and verdict["verdict"] == "allow", verdict
    other = make_pki(tmp_path / "other-pki")
    foreign = write_policy(
        tmp_path / "f", f'[signatures]\nrequire = true\ntrusted_cas = ["{other.root_cert}"]\n'
    )
    code, verdict = signature_verdict(sovcli_cli, foreign)
    assert code == 11 and verdict["verdict"] == "deny"


@pytest.mark.slow
def test_a_signed_model_runs(sovcli_cli, smollm2_model, tmp_path: Path, site_keys) -> None:
    policy = key_policy(tmp_path, site_keys.public)
    sign(sovcli_cli, "--key", site_keys.private)
    done = sovcli_cli(
        "run", MODEL, "Say hello.", "--max-tokens", "8", "--temperature", "0",
        env=env_for(policy),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
