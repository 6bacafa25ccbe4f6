"""`sovcli create` and `sovcli cp`: created models in the store, their spec and provenance.

A tiny GGUF stands in for the base (nothing is loaded here); the real model runs a created
model in tests/engine/test_verbs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from sovcli.cli.main import app

from .conftest import make_gguf


@pytest.fixture
def base(runner, tmp_path: Path) -> str:
    """A tiny model installed as `tiny:Q4_K_M`."""
    gguf = make_gguf(tmp_path / "src" / "tiny.Q4_K_M.gguf")
    result = runner.invoke(app, ["import", str(gguf), "--name", "tiny", "--tag", "Q4_K_M"])
    assert result.exit_code == 0, result.output
    return "tiny:Q4_K_M"


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_SPEC = """
system = "You answer claims questions in two sentences."
stop = ["</answer>", "\\n\\n"]
description = "claims desk"
[parameters]
temperature = 0.2
top_k = 20
seed = 7
max_tokens = 64
ctx = 512
"""


def _manifest(home: Path, name: str, tag: str) -> dict:
    return json.loads((home / "models" / name / tag / "manifest.json").read_text())


def test_create_registers_the_base_gguf_and_the_preset_with_provenance(
    runner, base: str, tmp_path: Path, isolated_env: Path
) -> None:
    spec = _spec(tmp_path, GOOD_SPEC)
    result = runner.invoke(app, ["create", "claims-bot", "--from", base, "-f", str(spec)])
    assert result.exit_code == 0, result.output
    folder = isolated_env / "models" / "claims-bot" / "latest"
    base_folder = isolated_env / "models" / "tiny" / "Q4_K_M"
    gguf = folder / "tiny.Q4_K_M.gguf"
    # the base's GGUF, hard-linked: no second copy of the weights
    assert os.stat(gguf).st_ino == os.stat(base_folder / "tiny.Q4_K_M.gguf").st_ino
    manifest = _manifest(isolated_env, "claims-bot", "latest")
    base_manifest = _manifest(isolated_env, "tiny", "Q4_K_M")
    assert {f["path"] for f in manifest["files"]} == {"tiny.Q4_K_M.gguf", "preset.json"}
    source = manifest["source"]
    assert source["kind"] == "created" and source["from"] == base
    assert source["gguf_sha256"] == base_manifest["files"][0]["sha256"]
    assert source["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    preset = json.loads((folder / "preset.json").read_text())
    assert preset["spec"]["text"] == spec.read_text()
    assert preset["from"]["model"] == base
    assert preset["system"].startswith("You answer claims")
    assert preset["parameters"] == {
        "temperature": 0.2,
        "top_k": 20,
        "seed": 7,
        "max_tokens": 64,
        "ctx": 512,
    }
    assert preset["stop"] == ["</answer>", "\n\n"]
    # verify re-hashes both files; show and list see it like any model
    verified = runner.invoke(app, ["verify", "claims-bot", "--json"])
    assert verified.exit_code == 0, verified.output
    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert {row["model"] for row in listed} == {"claims-bot:latest", base}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sytem = 'x'", "'sytem' is not a known key (did you mean 'system'?)"),
        ("[parameters]\ntemprature = 0.5", "'parameters.temprature' is not a known key"),
        ("[parameters]\ntemperature = 'hot'", "parameters.temperature must be a number"),
        ("[parameters]\ntop_k = 4.5", "parameters.top_k must be a whole number, not 4.5"),
        ("[parameters]\ntop_k = true", "parameters.top_k must be a whole number, not a boolean"),
        ("[parameters]\ntop_p = 0", "parameters.top_p must be > 0 and <= 1, not 0"),
        ("[parameters]\ntemperature = nan", "parameters.temperature must be a finite number"),
        ("[parameters]\nctx = 10", "parameters.ctx must be >= 64"),
        ("[parameters]\nseed = -1", "parameters.seed must be >= 0"),
        ("stop = 3", "stop must be a string or a list of strings"),
        ("stop = ['']", "stop holds an empty string"),
        ("system = 5", "system must be a string, not an integer"),
        ("parameters = 3", "parameters must be a table"),
        ("system = 'unterminated", "is not valid TOML"),
        ("template = '{% for %}'", "template is not a valid chat template"),
        ("template = 'hello'", "template leaves the messages out of the prompt"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key_and_registers_nothing(
    runner, base: str, tmp_path: Path, isolated_env: Path, spec: str, message: str
) -> None:
    path = _spec(tmp_path, spec)
    result = runner.invoke(app, ["create", "bot", "--from", base, "-f", str(path)])
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: ") and message in first, result.stderr
    assert "Traceback" not in result.output
    assert not (isolated_env / "models" / "bot").exists()


def test_a_spec_that_is_not_utf8_or_too_big_is_refused(runner, base: str, tmp_path: Path) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"system = '\xe9t\xe9'\n")
    result = runner.invoke(app, ["create", "bot", "--from", base, "-f", str(latin)])
    assert result.exit_code == 2 and "is not UTF-8" in result.stderr
    big = _spec(tmp_path, "system = '" + "x" * 300_000 + "'\n", "big.toml")
    result = runner.invoke(app, ["create", "bot", "--from", base, "-f", str(big)])
    assert result.exit_code == 2 and "a spec is small" in result.stderr


def test_names_that_cannot_be_created(runner, base: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, GOOD_SPEC)
    alias = runner.invoke(app, ["create", "smollm2-135m", "--from", base, "-f", str(spec)])
    assert alias.exit_code == 2 and "is a catalog alias" in alias.stderr
    path = runner.invoke(app, ["create", "./x.gguf", "--from", base, "-f", str(spec)])
    assert path.exit_code == 2 and "is not a name for a new model" in path.stderr
    # an imported (not created) model is never replaced by create
    clash = runner.invoke(app, ["create", base, "--from", base, "-f", str(spec)])
    assert clash.exit_code == 2 and "is already installed" in clash.stderr


def test_creating_again_replaces_a_created_model_and_layers_presets(
    runner, base: str, tmp_path: Path
) -> None:
    from sovcli.resolve import require_installed
    from sovcli.store.preset import preset_of

    first = _spec(tmp_path, GOOD_SPEC, "a.toml")
    assert runner.invoke(app, ["create", "bot:v1", "--from", base, "-f", str(first)]).exit_code == 0
    second = _spec(tmp_path, "[parameters]\ntemperature = 0.9\n", "b.toml")
    assert (
        runner.invoke(app, ["create", "bot:v1", "--from", base, "-f", str(second)]).exit_code == 0
    )
    assert preset_of(require_installed("bot:v1")).parameters == {"temperature": 0.9}
    # a model created from a created model keeps the base preset under its own
    assert (
        runner.invoke(app, ["create", "base-bot", "--from", base, "-f", str(first)]).exit_code == 0
    )
    made = runner.invoke(app, ["create", "hot-bot", "--from", "base-bot", "-f", str(second)])
    assert made.exit_code == 0, made.output
    preset = preset_of(require_installed("hot-bot"))
    assert preset.parameters["temperature"] == 0.9 and preset.parameters["top_k"] == 20
    assert preset.system and preset.system.startswith("You answer claims")
    assert preset.origin["from"]["model"] == "base-bot:latest"


def test_a_tampered_preset_is_refused_at_use(runner, base: str, tmp_path: Path) -> None:
    from sovcli.errors import IntegrityError
    from sovcli.resolve import require_installed
    from sovcli.store.preset import preset_of

    spec = _spec(tmp_path, GOOD_SPEC)
    assert runner.invoke(app, ["create", "bot", "--from", base, "-f", str(spec)]).exit_code == 0
    model = require_installed("bot")
    path = model.directory / "preset.json"
    path.write_text(path.read_text().replace("two sentences", "any way you like"))
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        preset_of(model)
    result = runner.invoke(app, ["verify", "bot"])
    assert result.exit_code == 7 and "preset.json" in result.output


def test_a_preset_from_a_bundle_is_checked_like_a_spec(
    runner, base: str, tmp_path: Path, isolated_env: Path
) -> None:
    """Export carries the preset; on the other side it is re-validated before use."""
    from sovcli.errors import UsageError
    from sovcli.resolve import require_installed
    from sovcli.store.preset import preset_of

    spec = _spec(tmp_path, GOOD_SPEC)
    assert runner.invoke(app, ["create", "bot", "--from", base, "-f", str(spec)]).exit_code == 0
    bundle = tmp_path / "bot.tar"
    exported = runner.invoke(app, ["export", "bot", "-o", str(bundle)])
    assert exported.exit_code == 0, exported.output
    assert runner.invoke(app, ["rm", "bot", "--yes"]).exit_code == 0
    pulled = runner.invoke(app, ["pull", str(bundle)])
    assert pulled.exit_code == 0, pulled.output
    preset = preset_of(require_installed("bot:latest"))
    assert preset is not None and preset.parameters["top_k"] == 20
    # a hostile preset (hash updated to match) is still refused by the validation
    model = require_installed("bot:latest")
    doc = json.loads((model.directory / "preset.json").read_text())
    doc["parameters"]["temperature"] = -3
    hostile = (json.dumps(doc)).encode()
    (model.directory / "preset.json").write_bytes(hostile)
    manifest = json.loads((model.directory / "manifest.json").read_text())
    for record in manifest["files"]:
        if record["path"] == "preset.json":
            record["sha256"] = hashlib.sha256(hostile).hexdigest()
            record["size"] = len(hostile)
    (model.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match=r"parameters\.temperature must be >= 0"):
        preset_of(require_installed("bot:latest"))


def test_cp_links_the_files_and_records_the_original(runner, base: str, isolated_env: Path) -> None:
    result = runner.invoke(app, ["cp", base, "team/tiny:stable", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "team/tiny:stable"
    copy = _manifest(isolated_env, "team/tiny", "stable")
    original = _manifest(isolated_env, "tiny", "Q4_K_M")
    assert copy["files"] == original["files"]
    assert copy["source"]["kind"] == "copy" and copy["source"]["from"] == base
    assert copy["source"]["original_source"] == original["source"]
    gguf = "tiny.Q4_K_M.gguf"
    a = isolated_env / "models" / "team" / "tiny" / "stable" / gguf
    assert os.stat(a).st_ino == os.stat(isolated_env / "models" / "tiny" / "Q4_K_M" / gguf).st_ino
    again = runner.invoke(app, ["cp", base, "team/tiny:stable"])
    assert again.exit_code == 2 and "is already installed" in again.stderr
    missing = runner.invoke(app, ["cp", "nothing-here:v1", "x"])
    assert missing.exit_code == 4
    # removing the original leaves the copy intact
    assert runner.invoke(app, ["rm", base, "--yes"]).exit_code == 0
    assert runner.invoke(app, ["verify", "team/tiny:stable"]).exit_code == 0
