"""Issue #13, findings 9 and 10: incomplete checkpoints and GGUFs are refused by name, the
metadata llama.cpp reads is written, outputs are durable, and SIGTERM leaves no temp file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _copy(folder: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def _field(path: Path, key: str):
    import gguf

    found = gguf.GGUFReader(path).fields.get(key)
    return None if found is None else found.contents()


def _leftovers(folder: Path) -> list[str]:
    """Hidden temp files or folders beside an output (`.<name>.XXXX.tmp`)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _refused(args: list[str], *fragments: str, code: int = 9) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    assert result.stderr.startswith("error: ") and "hint: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _drop_tensor(shard: Path, name: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))


def _sharded(tiny_checkpoint, tmp_path: Path, parts: int = 3) -> tuple[Path, list[str]]:
    from tiny_checkpoints import shard

    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    return folder, shard(folder, parts)


# ----------------------------------------------------------------------------- finding 9


def test_complete_sharded_checkpoint_converts(tiny_checkpoint, tmp_path: Path) -> None:
    folder, _files = _sharded(tiny_checkpoint, tmp_path)
    out = tmp_path / "out" / "m.gguf"
    result = runner.invoke(app, ["convert", str(folder), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and _leftovers(out.parent) == []


def test_stale_index_is_refused_with_the_missing_tensor_named(tiny_checkpoint, tmp_path) -> None:
    folder, _files = _sharded(tiny_checkpoint, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    lost = "model.layers.1.input_layernorm.weight"
    _drop_tensor(folder / index["weight_map"][lost], lost)
    out = tmp_path / "out" / "m.gguf"
    _refused(
        ["convert", str(folder), "-o", str(out)],
        "1 tensor(s) listed in model.safetensors.index.json are not in their shard",
        lost,
        index["weight_map"][lost],
    )
    assert not out.exists() and not out.parent.exists()


def test_index_missing_tensors_that_the_shards_hold_is_refused(tiny_checkpoint, tmp_path) -> None:
    folder, _files = _sharded(tiny_checkpoint, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(index))
    _refused(["convert", str(folder), "-o", str(tmp_path / "m.gguf")], "model.norm.weight")


def test_shards_copied_without_index_and_one_missing_are_refused(tiny_checkpoint, tmp_path) -> None:
    folder, files = _sharded(tiny_checkpoint, tmp_path)
    (folder / "model.safetensors.index.json").unlink()
    (folder / files[1]).unlink()
    out = tmp_path / "m.gguf"
    _refused(["convert", str(folder), "-o", str(out)], "1 of 3 shards are missing", files[1])
    assert not out.exists() and _leftovers(tmp_path) == []


def test_checkpoint_lacking_a_layer_tensor_is_refused_by_gguf_name(
    tiny_checkpoint, tmp_path
) -> None:
    for kind, lost, gguf_name in [
        ("llama2", "model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight"),
        ("qwen2", "model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
        ("gemma3", "model.layers.1.self_attn.q_norm.weight", "blk.1.attn_q_norm.weight"),
        ("phi3", "model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
    ]:
        folder = _copy(tiny_checkpoint(kind), tmp_path, kind)
        _drop_tensor(folder / "model.safetensors", lost)
        out = tmp_path / f"{kind}.gguf"
        _refused(["convert", str(folder), "-o", str(out)], "tensor(s) llama.cpp needs", gguf_name)
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def _incomplete_gguf(tiny_checkpoint, tmp_path: Path, monkeypatch) -> Path:
    """What the old converter wrote for a checkpoint missing one tensor: a GGUF llama.cpp
    cannot load (made by switching the completeness check off)."""
    from sovcli.convert import architectures
    from sovcli.convert.converter import convert_checkpoint

    folder = _copy(tiny_checkpoint("llama2"), tmp_path)
    _drop_tensor(folder / "model.safetensors", "model.layers.1.input_layernorm.weight")
    out = tmp_path / "incomplete-f16.gguf"
    with monkeypatch.context() as patch:
        patch.setattr(architectures, "check_tensor_set", lambda *_a, **_k: None)
        convert_checkpoint(folder, out, outtype="f16")
    return out


def test_quantize_refuses_a_gguf_missing_tensors(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from llama_helpers import LlamaModel

    source = _incomplete_gguf(tiny_checkpoint, tmp_path, monkeypatch)
    with pytest.raises(Exception):  # noqa: B017 - llama.cpp's own refusal, whatever its type
        LlamaModel(source, n_ctx=32)
    out = tmp_path / "q" / "m-Q4_0.gguf"
    _refused(
        ["quantize", str(source), "-t", "Q4_0", "-o", str(out)],
        "incomplete-f16.gguf lacks 1 tensor(s) llama.cpp needs: blk.1.attn_norm.weight",
    )
    assert not out.exists()


def test_quantize_refuses_an_absurd_block_count(tiny_gguf, tmp_path) -> None:
    data = bytearray(tiny_gguf("qwen2", "f16").read_bytes())
    key = b"qwen2.block_count"
    at = data.index(key) + len(key) + 4  # then the value type (u32) and the value
    data[at : at + 4] = (1_000_000_000).to_bytes(4, "little")
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(bytes(data))
    _refused(["quantize", str(hostile), "-t", "Q4_0"], "declares 1000000000 layers")


def test_quantize_refuses_hostile_gguf_headers_quickly(tmp_path) -> None:
    import struct

    def gguf(n_tensors: int, body: bytes) -> bytes:
        return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 1) + body

    key = struct.pack("<Q", 1) + b"x"
    nested = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100_000  # arrays 100k deep
    huge = struct.pack("<I", 9) + struct.pack("<IQ", 8, 10**15)  # 10^15 strings
    for name, data in [
        ("deep.gguf", gguf(0, key + nested)),
        ("huge.gguf", gguf(0, key + huge)),
        ("lying.gguf", gguf(10**12, key + struct.pack("<I", 4) + b"\0\0\0\0")),
    ]:
        (tmp_path / name).write_bytes(data)
        started = time.monotonic()
        _refused(["quantize", str(tmp_path / name), "-t", "Q4_0"], "is not a readable GGUF")
        assert time.monotonic() - started < 10


# ----------------------------------------------------------------------------- metadata


def test_repetition_penalty_is_written_even_for_greedy_decoding(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    (folder / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "repetition_penalty": 1.15, "temperature": 0.6})
    )
    out = tmp_path / "m.gguf"
    assert runner.invoke(app, ["convert", str(folder), "-o", str(out), "-q"]).exit_code == 0
    assert _field(out, "general.sampling.penalty_repeat") == pytest.approx(1.15)
    assert _field(out, "general.sampling.temp") is None  # not sampling: no temperature


def test_transformers5_rope_parameters_give_gemma3_both_rope_bases(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint("gemma3"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key in ("rope_theta", "rope_local_base_freq", "rope_scaling"):
        config.pop(key, None)
    config["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "g.gguf"
    assert runner.invoke(app, ["convert", str(folder), "-o", str(out), "-q"]).exit_code == 0
    assert _field(out, "gemma3.rope.freq_base") == 1000000.0
    assert _field(out, "gemma3.rope.freq_base_swa") == 10000.0


def _template(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> dict:
    single = [{"Sequence": {"id": "A", "type_id": 0}}]
    specials = {}
    for token, where in ((bos, 0), (eos, len(single) + 1)):
        if token is not None:
            single.insert(where, {"SpecialToken": {"id": token[0], "type_id": 0}})
            specials[token[0]] = {"id": token[0], "ids": [token[1]], "tokens": [token[0]]}
    return {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False},
            {"type": "TemplateProcessing", "single": single, "special_tokens": specials},
        ],
    }


def test_add_bos_and_add_eos_follow_the_tokenizer(tiny_checkpoint, tmp_path) -> None:
    folder = _copy(tiny_checkpoint("llama3"), tmp_path)
    tok = json.loads((folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    bos = ("<|begin_of_text|>", ids["<|begin_of_text|>"])
    eos = ("<|eot_id|>", ids["<|eot_id|>"])
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    # transformers-5 style: the post-processor says it, tokenizer_config.json does not.
    for key in ("add_bos_token", "add_eos_token", "bos_token", "eos_token"):
        tok_config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))

    cases = [((bos, eos), True, True), ((bos, None), True, None), ((None, eos), False, True)]
    for (with_bos, with_eos), want_bos, want_eos in cases:
        tok["post_processor"] = _template(with_bos, with_eos)
        (folder / "tokenizer.json").write_text(json.dumps(tok))
        out = tmp_path / "t.gguf"
        assert runner.invoke(app, ["convert", str(folder), "-o", str(out), "-q"]).exit_code == 0
        assert _field(out, "tokenizer.ggml.add_bos_token") is want_bos
        assert _field(out, "tokenizer.ggml.add_eos_token") is want_eos

    tok_config.update(add_bos_token=False, add_eos_token=True)  # the explicit choice wins
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert runner.invoke(app, ["convert", str(folder), "-o", str(out), "-q"]).exit_code == 0
    assert _field(out, "tokenizer.ggml.add_bos_token") is False
    assert _field(out, "tokenizer.ggml.add_eos_token") is True


# ----------------------------------------------------------------------------- durability


def _record_syncs(monkeypatch) -> list[tuple[str, int, int]]:
    """Record ("fsync", inode, size) / ("fsync-dir", inode, 0) / ("replace", inode, size)."""
    events: list[tuple[str, int, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        kind = "fsync-dir" if stat.S_ISDIR(info.st_mode) else "fsync"
        events.append((kind, info.st_ino, 0 if kind == "fsync-dir" else info.st_size))
        real_fsync(fd)

    def replace(src, dst) -> None:
        info = os.stat(src)
        events.append(("replace", info.st_ino, info.st_size))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _assert_durable(events: list[tuple[str, int, int]], out: Path) -> None:
    final = out.stat()
    replaced = events.index(("replace", final.st_ino, final.st_size))
    assert ("fsync", final.st_ino, final.st_size) in events[:replaced]  # the written file
    assert ("fsync-dir", out.parent.stat().st_ino, 0) in events[replaced:]  # then the rename


def test_convert_fsyncs_the_file_it_wrote_before_the_rename(
    tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    from sovcli.convert.converter import convert_checkpoint

    events = _record_syncs(monkeypatch)
    out = tmp_path / "m.gguf"
    convert_checkpoint(tiny_checkpoint("qwen2"), out, outtype="f16")
    _assert_durable(events, out)


def test_quantize_fsyncs_the_file_llama_cpp_wrote(tiny_gguf, tmp_path, monkeypatch) -> None:
    from sovcli.convert.quantize import quantize_gguf

    source = tiny_gguf("qwen2", "f16")
    events = _record_syncs(monkeypatch)
    out = tmp_path / "m-Q4_0.gguf"
    quantize_gguf(source, "Q4_0", out, threads=1)
    _assert_durable(events, out)


# ----------------------------------------------------------------------------- finding 10

# `python -m sovcli` with every tensor read slowed down, so a SIGTERM lands mid-conversion
# on a tiny checkpoint (the slow tests below use a checkpoint big enough to need no help).
SLOW_READS = (
    "import sys, time\n"
    "import sovcli.convert.converter as c\n"
    "real = c.read_tensor\n"
    "def read(*a, **k):\n"
    "    time.sleep(0.1)\n"
    "    return real(*a, **k)\n"
    "c.read_tensor = read\n"
    "from sovcli.cli.main import main\n"
    "sys.argv[0] = 'sovcli'\n"
    "main()\n"
)


def _terminate_midway(command: list[str], out: Path, min_bytes: int) -> tuple[int, str]:
    """Start `command`, SIGTERM it once its temp output holds `min_bytes`; (exit, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            written = [
                f.stat().st_size
                for tmp in out.parent.glob(f".{out.name}.*.tmp")
                for f in (tmp.iterdir() if tmp.is_dir() else [tmp])
            ]
            if any(size >= min_bytes for size in written):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the command ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr.decode("utf-8", "replace")


def _assert_terminated(code: int, stderr: str, out: Path) -> None:
    assert code == 143, stderr  # 128 + SIGTERM, as documented in docs/convert.md
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert _leftovers(out.parent) == []


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_sigterm_during_convert_leaves_no_temp_file(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    command = [sys.executable, "-c", SLOW_READS, "convert", str(tiny_checkpoint("llama2"))]
    code, stderr = _terminate_midway([*command, "-o", str(out), "-q"], out, 1)
    _assert_terminated(code, stderr, out)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then), follow_symlinks=False)


def test_leftover_of_a_killed_convert_is_swept_by_the_next_one(tiny_checkpoint, tmp_path) -> None:
    import socket

    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    folder = str(tiny_checkpoint("llama2"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", SLOW_READS, "convert", folder, "-o", str(out), "-q"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(".m.gguf.*.tmp/m.gguf")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait()
    (killed,) = _leftovers(out.parent)
    assert f"{socket.gethostname()}~{proc.pid}~" in killed
    _age(out.parent / killed, 3600)
    # Not swept: a running writer (this process), another host, a recent one.
    host = socket.gethostname()
    kept = [
        f".m.gguf.{host}~{os.getpid()}~live.tmp",
        f".m.gguf.other-host~{proc.pid}~nfs.tmp",
        f".m.gguf.{host}~{proc.pid}~recent.tmp",
    ]
    for name in kept:
        (out.parent / name).mkdir()
        if "recent" not in name:
            _age(out.parent / name, 3600)

    result = runner.invoke(app, ["convert", folder, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert _leftovers(out.parent) == sorted(kept)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory) -> Path:
    """A llama2-shaped checkpoint of 64M parameters (256 MB f32): seconds to convert."""
    from tiny_checkpoints import build

    folder = tmp_path_factory.mktemp("big") / "big-llama"
    return build("llama2", folder, hidden=1024, ffn=4096, layers=4)


@pytest.mark.slow
def test_sigterm_during_a_real_convert_leaves_no_temp_file(big_checkpoint, tmp_path) -> None:
    out = tmp_path / "big-q8_0.gguf"
    command = [sys.executable, "-m", "sovcli", "convert", str(big_checkpoint), "-t", "q8_0"]
    code, stderr = _terminate_midway([*command, "-o", str(out), "-q"], out, 4 << 20)
    _assert_terminated(code, stderr, out)


@pytest.mark.slow
def test_sigterm_during_quantize_leaves_no_temp_file(big_checkpoint, tmp_path) -> None:
    from sovcli.convert.converter import convert_checkpoint

    source = tmp_path / "big-f16.gguf"
    convert_checkpoint(big_checkpoint, source, outtype="f16")
    out = tmp_path / "q" / "big-Q4_K_M.gguf"
    out.parent.mkdir()
    command = [sys.executable, "-m", "sovcli", "quantize", str(source), "-t", "Q4_K_M"]
    command += ["-o", str(out), "--threads", "1", "-q"]
    started = time.monotonic()
    code, stderr = _terminate_midway(command, out, 1 << 20)
    _assert_terminated(code, stderr, out)
    assert time.monotonic() - started < 30  # did not wait for llama.cpp to finish


def test_termination_handlers_leave_ignored_signals_alone() -> None:
    """`nohup sovcli ...` keeps ignoring SIGHUP; SIGTERM at its default is taken over."""
    code = (
        "import signal\n"
        "from sovcli.cli.main import install_signal_handlers\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "install_signal_handlers()\n"
        "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN,\n"
        "      callable(signal.getsignal(signal.SIGTERM)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.stdout.split() == ["True", "True"], proc.stderr
