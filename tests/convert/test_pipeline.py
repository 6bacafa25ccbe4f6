"""The pull integration: checkpoint -> intermediate GGUF -> quantized GGUF + provenance record,
directly and through `sovcli pull` against the local hub server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app
from sovcli.convert.pipeline import convert_checkpoint_to_gguf
from sovcli.store.hashing import sha256_file


def test_pipeline_record_and_cleanup(tiny_checkpoint, tmp_path: Path) -> None:
    folder = tiny_checkpoint("llama3", "BF16")
    out = tmp_path / "partial" / "tiny-Q8_0.gguf"
    record = convert_checkpoint_to_gguf(folder, out, quant="q8_0", keep_intermediate=False)

    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "tiny-Q8_0.gguf"
    ]  # no intermediate left
    assert record["quant_type"] == "Q8_0"
    assert record["outtype"] == "bf16"  # bf16 weights stay bf16 before quantizing
    assert record["output"] == {
        "file": out.name,
        "size": out.stat().st_size,
        "sha256": sha256_file(out),
    }
    inputs = {f["file"]: f for f in record["inputs"]}
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert inputs[name]["sha256"] == sha256_file(folder / name)
    assert record["converter"]["schema_version"] >= 1 and record["converter"]["sovcli_version"]
    assert record["imatrix_sha256"] is None
    assert record["llama_cpp"].startswith("llama-cpp-python ")
    assert record["architecture"] == "LlamaForCausalLM"
    json.dumps(record)  # the manifest stores it as JSON


def test_pipeline_keeps_intermediate_when_asked(tiny_checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "m-Q4_0.gguf"
    record = convert_checkpoint_to_gguf(
        tiny_checkpoint("qwen2"), out, quant="Q4_0", keep_intermediate=True
    )
    assert record["outtype"] == "f16"
    kept = Path(record["intermediate"])
    assert kept.is_file() and kept != out and kept.parent == out.parent


def test_pipeline_float_quant_is_a_direct_conversion(tiny_checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "m-F16.gguf"
    record = convert_checkpoint_to_gguf(
        tiny_checkpoint("qwen3"), out, quant="F16", keep_intermediate=False
    )
    assert record["outtype"] == "f16" and record["quant_type"] == "F16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-F16.gguf"]


def test_pipeline_failure_leaves_nothing(tiny_checkpoint, tmp_path: Path) -> None:
    from sovcli.errors import UsageError

    out = tmp_path / "m.gguf"
    with pytest.raises(UsageError):
        convert_checkpoint_to_gguf(
            tiny_checkpoint("qwen2"), out, quant="IQ2_XS", keep_intermediate=False
        )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    hub_server = pytest.importorskip(
        "tests.store.hub_server", reason="the store's local hub server is missing"
    )
    with hub_server.HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_pull_safetensors_repo_converts_and_records(
    hub, tiny_checkpoint, tmp_path: Path, monkeypatch
) -> None:
    """`sovcli pull` of a catalog entry whose source is a safetensors repo on the (local) hub."""
    folder = tiny_checkpoint("llama3", "BF16")
    hub.add_folder("acme/tiny-llama", folder)
    catalog = tmp_path / "user-models.toml"
    catalog.write_text(
        '[models."tiny-llama"]\n'
        'description = "tiny test checkpoint"\n'
        'license = "apache-2.0"\n'
        'default_quant = "Q8_0"\n'
        '[[models."tiny-llama".sources]]\n'
        'kind = "hf"\n'
        'repo = "acme/tiny-llama"\n'
        'format = "safetensors"\n'
    )
    monkeypatch.setenv("SOVCLI_CATALOG", str(catalog))
    result = CliRunner().invoke(app, ["pull", "tiny-llama:Q8_0"])
    assert result.exit_code == 0, result.output

    from sovcli.resolve import find_installed

    model = find_installed("tiny-llama:Q8_0")
    assert model is not None
    manifest = model.manifest
    conversion = manifest["conversion"]
    assert conversion["quant_type"] == "Q8_0"
    inputs = {f["file"]: f["sha256"] for f in conversion["inputs"]}
    assert inputs["model.safetensors"] == sha256_file(folder / "model.safetensors")
    assert conversion["output"]["sha256"] == sha256_file(Path(model.gguf_path))
    assert manifest["source"]["repo"] == "acme/tiny-llama"


def test_pull_hf_reference_of_a_checkpoint_converts_to_the_default_quant(
    hub, tiny_checkpoint
) -> None:
    """`sovcli pull hf:org/repo` of a repo with no GGUF but a safetensors checkpoint converts it
    and quantizes to the default Q4_K_M, with the conversion chain in the manifest."""
    folder = tiny_checkpoint("llama3", "BF16")
    hub.add_folder("acme/tiny-ckpt", folder)
    result = CliRunner().invoke(app, ["pull", "hf:acme/tiny-ckpt", "--quiet"])
    assert result.exit_code == 0, result.output

    from sovcli.resolve import find_installed

    model = find_installed("hf:acme/tiny-ckpt:Q4_K_M")
    assert model is not None and model.tag == "Q4_K_M"
    conversion = model.manifest["conversion"]
    assert conversion["quant_type"] == "Q4_K_M"
    assert conversion["output"]["sha256"] == sha256_file(Path(model.gguf_path))
