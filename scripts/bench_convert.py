#!/usr/bin/env python3
"""Benchmark `sovcli convert` + `sovcli quantize` on the SmolLM2 round-trip checkpoint.

Each step runs in its own child process; wall time and peak RSS (ru_maxrss of that child,
from os.wait4) are reported next to the checkpoint size and its largest tensor, so the
streaming claim ("peak memory near the largest tensor, not the model") can be read off.
A child that only imports the same modules gives the interpreter baseline. With
--upstream LLAMA_CPP_DIR, llama.cpp's own convert_hf_to_gguf.py (needs torch) runs on the
same checkpoint in the same session as a baseline, and the outputs' tensors are compared.

    python scripts/bench_convert.py
    python scripts/bench_convert.py --quant Q4_K_M --threads 2 --json
    python scripts/bench_convert.py --upstream /path/to/llama.cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run argv; return wall seconds and the child's peak RSS in MiB."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed:\n{stderr[-2000:]}")
    return {"seconds": round(wall, 2), "max_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def checkpoint_sizes(folder: Path) -> dict[str, float]:
    """Total safetensors bytes and the largest tensor (as stored, and as float32)."""
    sys.path.insert(0, str(ROOT))
    from sovcli.convert.checkpoint import open_checkpoint

    ckpt = open_checkpoint(folder)
    largest = max(ckpt.tensors.values(), key=lambda r: r.nbytes)
    return {
        "checkpoint_mib": round(sum(f.stat().st_size for f in ckpt.weight_files) / 2**20, 1),
        "largest_tensor": largest.name,
        "largest_tensor_mib": round(largest.nbytes / 2**20, 1),
        "largest_tensor_f32_mib": round(largest.n_elements * 4 / 2**20, 1),
    }


def make_synthetic_checkpoint(folder: Path, layers: int) -> Path:
    """A random Llama-shaped bf16 checkpoint (hidden 2048, vocab 32000, ~112 MB per layer),
    one shard per layer, to show that peak memory does not grow with the model."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_hf_checkpoint import to_bf16_bits, write_safetensors

    hidden, ffn, heads, kv, vocab = 2048, 5632, 16, 4, 32000
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def mat(*shape: int) -> tuple[str, np.ndarray]:
        return "BF16", to_bf16_bits(rng.standard_normal(shape, dtype=np.float32) * 0.02)

    def ones(n: int) -> tuple[str, np.ndarray]:
        return "BF16", to_bf16_bits(np.ones(n, dtype=np.float32))

    weight_map: dict[str, str] = {}
    shards = [
        {
            "model.embed_tokens.weight": mat(vocab, hidden),
            "lm_head.weight": mat(vocab, hidden),
            "model.norm.weight": ones(hidden),
        }
    ]
    for i in range(layers):
        p = f"model.layers.{i}"
        shards.append(
            {
                f"{p}.input_layernorm.weight": ones(hidden),
                f"{p}.post_attention_layernorm.weight": ones(hidden),
                f"{p}.self_attn.q_proj.weight": mat(hidden, hidden),
                f"{p}.self_attn.k_proj.weight": mat(kv * hidden // heads, hidden),
                f"{p}.self_attn.v_proj.weight": mat(kv * hidden // heads, hidden),
                f"{p}.self_attn.o_proj.weight": mat(hidden, hidden),
                f"{p}.mlp.gate_proj.weight": mat(ffn, hidden),
                f"{p}.mlp.up_proj.weight": mat(ffn, hidden),
                f"{p}.mlp.down_proj.weight": mat(hidden, ffn),
            }
        )
    for n, shard in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": vocab, "tie_word_embeddings": False,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    byte_tokens = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)]
    byte_tokens += [chr(c) for c in range(174, 256)] + [chr(256 + i) for i in range(68)]
    tokenizer = {
        "version": "1.0", "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(byte_tokens)}, "merges": []},
    }  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return folder


def compare_tensors(a: Path, b: Path) -> dict[str, int]:
    """Count tensors whose type or bytes differ between two GGUFs."""
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    differing = [
        n
        for n in ta
        if n not in tb
        or ta[n].tensor_type != tb[n].tensor_type
        or ta[n].data.tobytes() != tb[n].data.tobytes()
    ]
    return {"tensors": len(ta), "differing": len(differing) + len(set(tb) - set(ta))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="source GGUF (default: the cached SmolLM2 Q4_1)")
    parser.add_argument("--checkpoint", type=Path, help="reuse an HF checkpoint folder")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument("--outtype", default="f16")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--upstream", type=Path, help="llama.cpp source dir (convert_hf_to_gguf.py)"
    )
    parser.add_argument(
        "--synthetic-layers",
        type=int,
        default=0,
        help="instead of SmolLM2, convert a random Llama-shaped bf16 checkpoint with this many "
        "layers (~112 MB each; 12 layers is about 1.6 GB)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--make-synthetic", nargs=2, metavar=("DIR", "LAYERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.make_synthetic:
        make_synthetic_checkpoint(Path(args.make_synthetic[0]), int(args.make_synthetic[1]))
        return 0

    sys.path.insert(0, str(ROOT))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sovcli-bench-convert-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    folder = args.checkpoint
    if folder is None and args.synthetic_layers:
        folder = workdir / f"synthetic-{args.synthetic_layers}-layers"
        if not (folder / "config.json").is_file():
            # In a child: ru_maxrss of later children would otherwise include this
            # process's memory inherited across fork.
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--make-synthetic",
                    str(folder),
                    str(args.synthetic_layers),
                ],
                check=True,
                env=env,
            )
    if folder is None:
        source = args.gguf
        if source is None:
            sys.path.insert(0, str(ROOT / "scripts"))
            import fetch_test_model

            source = fetch_test_model.gguf_path()
        folder = workdir / "SmolLM2-135M-Instruct"
        if not (folder / "config.json").is_file():
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "make_hf_checkpoint.py"),
                    str(source),
                    str(folder),
                ],
                check=True,
                env=env,
            )

    py = sys.executable
    out_float = workdir / f"bench-{args.outtype}.gguf"
    out_quant = workdir / f"bench-{args.quant}.gguf"
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        **checkpoint_sizes(folder),
    }
    results["import_baseline"] = run_child(
        [
            py,
            "-c",
            "import numpy, gguf, llama_cpp, sovcli.convert.converter, sovcli.convert.quantize",
        ],
        env,
    )
    results["convert"] = run_child(
        [
            py,
            "-m",
            "sovcli",
            "convert",
            str(folder),
            "-t",
            args.outtype,
            "-o",
            str(out_float),
            "-q",
        ],
        env,
    )
    results["quantize"] = run_child(
        [
            py, "-m", "sovcli", "quantize", str(out_float), "-t", args.quant,
            "-o", str(out_quant), "--threads", str(args.threads), "-q",
        ],
        env,
    )  # fmt: skip
    results["output_mib"] = {
        args.outtype: round(out_float.stat().st_size / 2**20, 1),
        args.quant: round(out_quant.stat().st_size / 2**20, 1),
    }
    base = results["import_baseline"]["max_rss_mib"]  # type: ignore[index]
    conv = results["convert"]  # type: ignore[assignment]
    results["convert_rss_above_baseline_mib"] = round(conv["max_rss_mib"] - base, 1)
    results["convert_rss_above_baseline_vs_checkpoint"] = round(
        (conv["max_rss_mib"] - base) / results["checkpoint_mib"],
        2,  # type: ignore[operator]
    )
    if args.upstream:
        script = args.upstream / "convert_hf_to_gguf.py"
        up_out = workdir / f"upstream-{args.outtype}.gguf"
        up_env = dict(env, PYTHONPATH=str(args.upstream / "gguf-py"))
        results["upstream_convert"] = run_child(
            [py, str(script), str(folder), "--outtype", args.outtype, "--outfile", str(up_out)],
            up_env,
        )
        up = results["upstream_convert"]
        results["convert_time_ratio_vs_upstream"] = round(conv["seconds"] / up["seconds"], 2)  # type: ignore[index]
        results["convert_rss_ratio_vs_upstream"] = round(conv["max_rss_mib"] / up["max_rss_mib"], 2)  # type: ignore[index]
        results["tensors_vs_upstream"] = compare_tensors(out_float, up_out)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:42} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
