"""The air-gap flow, as a site runs it, with the real model.

Store A (connected) signs the model with the site's key and exports a bundle. Store B is an
air-gapped machine: every command runs inside `unshare -n` (a network namespace with only
loopback), under a policy that trusts only the site's key, allows only bundles and denies
the network. The signed bundle is accepted; a bundle altered in transit or signed by another
key is refused with nothing registered; run, serve and batch refuse a model the site did not
sign.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOT
from .policy_support import GGUF_SHA256, memo_folder, write_policy

MODEL = "smollm2-135m:Q4_1"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", "ip link set lo up"], capture_output=True
    )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,  # exports, imports and runs the real model
    pytest.mark.skipif(
        not _unshare_works(),
        reason="`unshare -n` (a network namespace) is not permitted here: needs root or "
        "user namespaces, and the `ip` tool",
    ),
]


def offline(home: Path, *args: str | Path, policy: Path | None = None, timeout: float = 240):
    """`sovcli ARGS` for the store `home`, inside a network namespace with only loopback."""
    env = {**os.environ, "SOVCLI_HOME": str(home), "SOVCLI_NO_PROGRESS": "1"}
    env.pop("SOVCLI_POLICY", None)
    if policy is not None:
        env["SOVCLI_POLICY"] = str(policy)
    command = shlex.join([sys.executable, "-m", "sovcli", *map(str, args)])
    shell = f"ip link set lo up; cd {shlex.quote(str(ROOT))} && exec {command}"
    return subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", shell],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def registered(home: Path) -> list[str]:
    """The models in the store `home` (read offline too)."""
    done = offline(home, "list", "--json")
    assert done.returncode == 0, done.stderr
    return [f"{m['name']}:{m['tag']}" for m in json.loads(done.stdout)]


def forged(bundle: Path, out: Path) -> Path:
    """`bundle` with one byte of its GGUF changed and the manifest's hash rewritten to match
    (what an attacker in transit would do): only the signature can tell."""
    import hashlib

    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    by_name = dict((m.name, data) for m, data in members)
    gguf = bytearray(by_name[GGUF])
    gguf[len(gguf) // 2] ^= 0x01
    header = json.loads(by_name["sovcli-bundle.json"])
    for record in header["manifest"]["files"]:
        if record["path"] == GGUF:
            record["sha256"] = hashlib.sha256(gguf).hexdigest()
    replaced = {GGUF: bytes(gguf), "sovcli-bundle.json": json.dumps(header).encode()}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            data = replaced.get(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out


@pytest.fixture
def bundles(smollm2_model, sovcli_cli, site_keys, rogue_keys, tmp_path: Path) -> dict[str, Path]:
    """Store A: the model signed by the site and exported; then signed by a rogue key and
    exported again; and a forged copy of the site's bundle."""
    out = {"signed": tmp_path / "signed.tar", "rogue": tmp_path / "rogue.tar"}
    for name, key in (("signed", site_keys), ("rogue", rogue_keys)):
        signed = sovcli_cli("sign", MODEL, "--key", key.private, "-q")
        assert signed.returncode == 0, signed.stderr
        exported = sovcli_cli("export", MODEL, "-o", out[name], "--json")
        assert exported.returncode == 0, exported.stderr
        assert json.loads(exported.stdout)["signature"] is True
    out["forged"] = forged(out["signed"], tmp_path / "forged.tar")
    flipped = tmp_path / "flipped.tar"
    shutil.copyfile(out["signed"], flipped)
    with flipped.open("r+b") as fh:
        fh.seek(flipped.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, io.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    out["flipped"] = flipped
    return out


@pytest.fixture
def site_policy(tmp_path: Path, site_keys) -> Path:
    """The air-gapped machine's policy: signed by the site's key, bundles only, no network."""
    keys = tmp_path / "etc" / "keys"
    keys.mkdir(parents=True)
    shutil.copyfile(site_keys.public, keys / "site.pub")
    return write_policy(
        tmp_path / "etc",
        '[signatures]\nrequire = true\ntrusted_keys = ["keys/site.pub"]\n'
        '[sources]\nallow = ["bundle"]\nnetwork = "deny"\n',
    )


def test_a_signed_bundle_is_accepted_offline_and_runs(
    bundles: dict[str, Path], site_policy: Path, tmp_path: Path
) -> None:
    home = tmp_path / "store-b"
    pulled = offline(home, "pull", bundles["signed"], policy=site_policy)
    assert pulled.returncode == 0, pulled.stderr
    assert registered(home) == [MODEL]
    check = offline(home, "policy", "check", MODEL, "--json", policy=site_policy)
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["digest"] == f"sha256:{GGUF_SHA256}"
    ran = offline(
        home, "run", MODEL, "Name a colour.", "--max-tokens", "8", "--temperature", "0",
        policy=site_policy,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()


def test_an_altered_or_foreign_bundle_is_refused_and_nothing_registered(
    bundles: dict[str, Path], site_policy: Path, tmp_path: Path
) -> None:
    home = tmp_path / "store-c"
    for which in ("flipped", "forged", "rogue"):
        done = offline(home, "pull", bundles[which], policy=site_policy)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        if which == "rogue":  # well-formed, but not by the site's key: the policy refuses it
            assert done.returncode == 11
            assert f"error: policy {site_policy} denies pull of {MODEL}" in errors[0]
            assert "rule signatures.require" in errors[0] and "untrusted" in errors[0]
        else:  # bytes changed in transit: the manifest or the signature no longer matches
            assert done.returncode == 7, done.stderr
        assert registered(home) == []
        assert not list(home.rglob("*.gguf")), f"{which}: a model file was left in the store"


def test_run_serve_batch_refuse_a_model_the_site_did_not_sign(
    bundles: dict[str, Path], site_policy: Path, tmp_path: Path
) -> None:
    home = tmp_path / "store-d"
    # Registered before the policy was in force: the policy still judges every use.
    assert offline(home, "pull", bundles["rogue"]).returncode == 0
    docs = memo_folder(tmp_path, "The audit is due on Friday.")
    results = tmp_path / "results.jsonl"
    commands = {
        "run": ("run", MODEL, "hello"),
        "serve": ("serve", MODEL, "--port", "0"),
        "batch": ("batch", MODEL, docs, "-o", results, "--prompt", "Summarise: {text}"),
    }
    for action, args in commands.items():
        done = offline(home, *args, policy=site_policy, timeout=60)
        assert done.returncode == 11, (action, done.stderr)
        assert f"denies {action} of {MODEL}: rule signatures.require" in done.stderr
        assert "serving" not in done.stderr
    assert not results.exists()
