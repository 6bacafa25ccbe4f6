"""Bad input to `convert` / `quantize` gets a one-line error, a hint and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def _assert_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert "error: " in result.stderr
    assert "hint: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_unsupported_architecture_is_refused_by_name(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    result = _run("convert", str(folder), "-o", str(tmp_path / "x.gguf"))
    _assert_error(result, 9, "FalconForCausalLM", "MixtralForCausalLM", "Qwen3ForCausalLM")
    assert not (tmp_path / "x.gguf").exists()


def test_not_a_checkpoint_folder(tmp_path) -> None:
    _assert_error(_run("convert", str(tmp_path / "nope")), 4, "is not a directory")
    (tmp_path / "empty").mkdir()
    _assert_error(_run("convert", str(tmp_path / "empty")), 9, "config.json is missing")


def test_pickle_only_checkpoint_is_refused(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _assert_error(_run("convert", str(folder)), 9, "pickle")


def test_truncated_safetensors_leaves_no_output(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.gguf"
    _assert_error(_run("convert", str(folder), "-o", str(out)), 9, "truncated")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.gguf.*"))


def test_missing_shard_is_named(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    index = {
        "metadata": {},
        "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_error(_run("convert", str(folder)), 9, "model-00002-of-00002.safetensors")


def test_unknown_outtype(tiny_checkpoint, tmp_path) -> None:
    _assert_error(_run("convert", str(tiny_checkpoint("llama3")), "--outtype", "q4_k"), 2, "q4_k")


def test_unknown_pre_tokenizer_asks_for_override(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("qwen2"), tmp_path)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+"
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "o.gguf"
    _assert_error(_run("convert", str(folder), "-o", str(out)), 9, "--pre-tokenizer")
    forced = _run("convert", str(folder), "-o", str(out), "--pre-tokenizer", "qwen2", "-q")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.strip() == str(out)


def test_missing_tokenizer_is_named(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama2"), tmp_path)
    (folder / "tokenizer.model").unlink()
    _assert_error(_run("convert", str(folder)), 9, "no tokenizer")


# ----------------------------------------------------------------------------- quantize


def test_quantize_bad_type_lists_types(tiny_gguf) -> None:
    _assert_error(
        _run("quantize", str(tiny_gguf("llama3", "f16")), "--type", "Q9_X"), 2, "Q4_K_M", "IQ4_XS"
    )


def test_quantize_missing_and_non_gguf_input(tmp_path) -> None:
    _assert_error(
        _run("quantize", str(tmp_path / "no.gguf"), "--type", "Q4_0"), 4, "does not exist"
    )
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    _assert_error(_run("quantize", str(junk), "--type", "Q4_0"), 9, "not a GGUF")


def test_iq_types_need_an_imatrix(tiny_gguf, tmp_path) -> None:
    out = tmp_path / "iq.gguf"
    _assert_error(
        _run("quantize", str(tiny_gguf("llama3", "f16")), "-t", "IQ4_NL", "-o", str(out)),
        2,
        "--imatrix",
    )
    assert not out.exists()


def test_requantizing_is_refused_with_a_hint(tiny_gguf, tmp_path) -> None:
    q8 = tiny_gguf("llama3", "q8_0")
    out = tmp_path / "q4.gguf"
    _assert_error(_run("quantize", str(q8), "-t", "Q4_0", "-o", str(out)), 9, "requantizing")
    assert not out.exists()
    ok = _run("quantize", str(q8), "-t", "Q4_0", "-o", str(out), "--allow-requantize", "-q")
    assert ok.exit_code == 0, ok.output
    assert out.is_file()


def _legacy_imatrix(path: Path, gguf_path: Path) -> None:
    """A legacy llama-imatrix .dat file with unit importances for every 2-D weight."""
    import gguf

    entries = [
        (t.name, int(t.shape[0]))
        for t in gguf.GGUFReader(gguf_path).tensors
        if len(t.shape) == 2 and t.name.startswith("blk.")
    ]
    blob = struct.pack("<i", len(entries))
    for name, ncols in entries:
        raw = name.encode()
        blob += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, ncols)
        blob += struct.pack(f"<{ncols}f", *([1.0] * ncols))
    path.write_bytes(blob)


def test_quantize_with_imatrix_records_its_hash(tiny_gguf, tmp_path) -> None:
    from sovcli.store.hashing import sha256_file

    source = tiny_gguf("llama3", "f16")
    imatrix = tmp_path / "tiny.imatrix.dat"
    _legacy_imatrix(imatrix, source)
    out = tmp_path / "tiny-IQ4_NL.gguf"
    result = _run(
        "quantize", str(source), "-t", "iq4_nl", "--imatrix", str(imatrix), "-o", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["type"] == "IQ4_NL"
    assert report["imatrix_sha256"] == sha256_file(imatrix)
    assert out.is_file()


@pytest.mark.parametrize("type_name", ["Q4_0", "Q5_K_M", "Q6_K", "BF16"])
def test_quantize_types_produce_loadable_files(type_name, tiny_gguf, tmp_path) -> None:
    from llama_helpers import LlamaModel

    out = tmp_path / f"t-{type_name}.gguf"
    result = _run(
        "quantize",
        str(tiny_gguf("qwen3", "f16")),
        "-t",
        type_name,
        "-o",
        str(out),
        "--threads",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    model = LlamaModel(out, n_ctx=32)
    try:
        assert len(model.greedy(model.tokenize("The quick"), 4, stop_at_eog=False)) == 4
    finally:
        model.close()


def test_convert_refuses_early_when_the_disk_is_too_small(
    tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    import shutil as shutil_mod
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda _p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "big.gguf"
    _assert_error(_run("convert", str(tiny_checkpoint("llama3")), "-o", str(out)), 8, "GB free")
    assert not out.exists()
