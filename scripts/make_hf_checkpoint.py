#!/usr/bin/env python3
"""Build a real Hugging Face checkpoint folder from a llama-architecture GGUF (e.g. SmolLM2).

The weights are dequantized with gguf.quants.dequantize, the llama.cpp q/k rotary permutation
is undone (so the folder looks like what a publisher uploads), and everything is written in
the Hugging Face layout: *.safetensors (bf16 or f32, optionally sharded with an index),
config.json, generation_config.json, tokenizer.json (byte-level BPE with its merges),
tokenizer_config.json (special tokens, chat template) and a README.md model card.

    python scripts/make_hf_checkpoint.py SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2-hf
    python scripts/make_hf_checkpoint.py IN.gguf OUT --dtype f32 --shard-mb 100
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_tensor_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama-architecture GGUF tensor."""
    if gguf_name in _TENSOR_NAMES:
        return _TENSOR_NAMES[gguf_name]
    _blk, layer, kind, suffix = gguf_name.split(".")
    return f"model.layers.{layer}.{_BLOCK_NAMES[kind]}.{suffix}"


def unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved rotary halves back to HF's split halves)."""
    return (
        weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def to_bf16_bits(data: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write a .safetensors file; values are (safetensors dtype, array holding those bytes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, arr) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _dtype, arr in tensors.values():
            fh.write(np.ascontiguousarray(arr).tobytes())


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def build_tokenizer(reader: Any) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """tokenizer.json and tokenizer_config.json contents from the GGUF's tokenizer.ggml.*."""
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges: list[str] = _field(reader, "tokenizer.ggml.merges")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only byte-level BPE (tokenizer.ggml.model = gpt2) GGUFs are supported")
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, kind) in enumerate(zip(tokens, types, strict=False))
        if kind == 3
    ]
    if pre == "smollm":
        pre_tokenizer: dict[str, Any] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        }
    elif pre in ("gpt-2", "default"):
        pre_tokenizer = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        }
    else:
        raise SystemExit(f"pre-tokenizer {pre!r} is not rebuilt by this script")
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }

    def name_of(key: str) -> str | None:
        tid = _field(reader, key)
        return tokens[tid] if tid is not None else None

    config: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {
                k: t[k]
                for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for t in added
        },
        "bos_token": name_of("tokenizer.ggml.bos_token_id"),
        "eos_token": name_of("tokenizer.ggml.eos_token_id"),
        "unk_token": name_of("tokenizer.ggml.unknown_token_id"),
        "pad_token": name_of("tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, "llama.context_length", 2048)),
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    if add_bos is not None:
        config["add_bos_token"] = bool(add_bos)
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tokenizer, config, added


def make_checkpoint(
    gguf_path: Path, out_dir: Path, *, dtype: str = "bf16", shard_mb: int = 0
) -> Path:
    """Write the Hugging Face folder for `gguf_path` into `out_dir`; return out_dir."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"only llama-architecture GGUFs are supported, not {arch}")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_head_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    out_dir.mkdir(parents=True, exist_ok=True)

    st_dtype = {"bf16": "BF16", "f32": "F32"}[dtype]
    shards: list[dict[str, tuple[str, np.ndarray]]] = [{}]
    shard_bytes = 0
    names = set()
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = data.reshape([int(d) for d in reversed(tensor.shape)])
        if tensor.name.endswith("attn_q.weight"):
            data = unpermute(data, n_head)
        elif tensor.name.endswith("attn_k.weight"):
            data = unpermute(data, n_head_kv)
        arr = to_bf16_bits(data) if dtype == "bf16" else data
        if shard_mb and shard_bytes + arr.nbytes > shard_mb * 1024 * 1024 and shards[-1]:
            shards.append({})
            shard_bytes = 0
        name = hf_tensor_name(tensor.name)
        names.add(name)
        shards[-1][name] = (st_dtype, arr)
        shard_bytes += arr.nbytes

    if len(shards) == 1:
        write_safetensors(out_dir / "model.safetensors", shards[0])
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out_dir / fname, shard)
            for name, (_d, arr) in shard.items():
                weight_map[name] = fname
                total += arr.nbytes
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    tokenizer, tok_config, _added = build_tokenizer(reader)
    tokens = tokenizer["model"]["vocab"]
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(_field(reader, "llama.embedding_length")),
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": len(tokens),
        "tie_word_embeddings": "lm_head.weight" not in names,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
        "use_cache": True,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}, indent=2)
    )
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tok_config, indent=2, ensure_ascii=False)
    )
    license_id = _field(reader, "general.license", "apache-2.0")
    name = _field(reader, "general.name", gguf_path.stem)
    (out_dir / "README.md").write_text(
        "---\n"
        f"license: {license_id}\n"
        "language:\n- en\n"
        "base_model:\n- HuggingFaceTB/SmolLM2-135M\n"
        "library_name: transformers\n"
        "tags:\n- safetensors\n- round-trip-test\n"
        "---\n\n"
        f"# {name}\n\nRebuilt from {gguf_path.name} by sovcli's scripts/make_hf_checkpoint.py.\n",
        encoding="utf-8",
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gguf", type=Path, help="a llama-architecture GGUF (e.g. SmolLM2 Q4_1)")
    parser.add_argument("out", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
    parser.add_argument("--shard-mb", type=int, default=0, help="split into shards of this size")
    args = parser.parse_args(argv)
    out = make_checkpoint(args.gguf, args.out, dtype=args.dtype, shard_mb=args.shard_mb)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
