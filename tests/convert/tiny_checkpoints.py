"""Tiny random Hugging Face checkpoints (numpy + safetensors, no torch) for every architecture.

Each builder writes config.json, model.safetensors, a tokenizer and tokenizer_config.json into
a folder, shaped like the publisher's real checkpoints but with 2 layers of width 64.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
LAYERS = 2
FFN = 128
CTX = 256

CORPUS = (
    "The quick brown fox jumps over the lazy dog. It's 2024 and we're testing 12345 numbers.\n"
    "Le renard brun saute par-dessus le chien paresseux. Héllo wörld, ça va?\n"
    "Der schnelle braune Fuchs springt über den faulen Hund. 東京は日本の首都です。\n"
    "Быстрая коричневая лиса прыгает через ленивую собаку. def main(): return 42\n"
) * 4

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- tokenizers


def write_bpe_tokenizer(
    folder: Path, split_regex: str, specials: list[str], vocab_size: int = 384
) -> int:
    """Train a byte-level BPE tokenizer.json with `tokenizers`; return its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _pb_varint((number << 3) | wire)
    if wire == 0:
        return key + _pb_varint(int(payload))
    if wire == 5:
        return key + bytes(payload)  # type: ignore[arg-type]
    data = bytes(payload)  # type: ignore[arg-type]
    return key + _pb_varint(len(data)) + data


def spm_pieces(extra_specials: tuple[str, ...] = ()) -> list[tuple[str, float, int]]:
    """A small SentencePiece BPE vocabulary: specials, 256 byte pieces, then word pieces."""
    pieces: list[tuple[str, float, int]] = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = [
        "▁",
        "e",
        "t",
        "o",
        "a",
        "h",
        "n",
        "r",
        "s",
        "i",
        "l",
        "d",
        "u",
        "c",
        "g",
        "y",
        "w",
        "k",
        "p",
        "m",
        "f",
        "b",
        "z",
        "x",
        "j",
        "v",
        "q",
        "T",
        "L",
        "▁t",
        "he",
        "▁the",
        "▁a",
        "in",
        "er",
        "on",
        "▁f",
        "ox",
        "▁fox",
        "▁d",
        "og",
        "▁dog",
        "▁b",
        "ro",
        "▁bro",
        "wn",
        "▁brown",
        "▁q",
        "ui",
        "ck",
        "▁quick",
        "▁l",
        "az",
        "▁lazy",
        "▁j",
        "um",
        "ps",
        "▁jumps",
        "▁o",
        "ver",
        "▁over",
    ]
    pieces += [(w, -float(i + 1), 1) for i, w in enumerate(words)]
    pieces += [(s, 0.0, 3) for s in extra_specials]
    return pieces


def write_spm_tokenizer(
    folder: Path, *, add_dummy_prefix: bool = True, extra_specials: tuple[str, ...] = ()
) -> int:
    """Write a SentencePiece tokenizer.model (protobuf encoded here); return its size."""
    pieces = spm_pieces(extra_specials)
    body = b""
    for piece, score, kind in pieces:
        msg = _pb_field(1, 2, piece.encode()) + _pb_field(2, 5, struct.pack("<f", score))
        msg += _pb_field(3, 0, kind)
        body += _pb_field(1, 2, msg)
    body += _pb_field(2, 2, _pb_field(3, 0, 2) + _pb_field(35, 0, 1))  # trainer: BPE, byte_fallback
    body += _pb_field(3, 2, _pb_field(1, 2, b"identity") + _pb_field(3, 0, int(add_dummy_prefix)))
    (folder / "tokenizer.model").write_bytes(body)
    return len(pieces)


# ----------------------------------------------------------------------------- weights


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> None:
    """Write tensors with the safetensors library (f32/f16), or bf16 bits by hand."""
    if dtype == "BF16":
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "make_hf_checkpoint",
            Path(__file__).resolve().parents[2] / "scripts" / "make_hf_checkpoint.py",
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.write_safetensors(
            path, {k: ("BF16", module.to_bf16_bits(v)) for k, v in tensors.items()}
        )
        return
    from safetensors.numpy import save_file

    np_dtype = {"F32": np.float32, "F16": np.float16}[dtype]
    save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()}, str(path))


class _Weights:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def mat(self, name: str, *shape: int, scale: float = 0.08) -> None:
        self.tensors[name] = (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(self, name: str, size: int, center: float = 1.0) -> None:
        self.tensors[name] = (center + self.rng.standard_normal(size) * 0.1).astype(np.float32)


def _base_config(
    arch: str, model_type: str, vocab: int, size: tuple[int, int, int], **extra: Any
) -> dict[str, Any]:
    hidden, ffn, layers = size
    config = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": CTX,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    config.update(extra)
    return config


def build(
    kind: str,
    folder: Path,
    *,
    dtype: str = "F32",
    seed: int = 0,
    hidden: int = HIDDEN,
    ffn: int = FFN,
    layers: int = LAYERS,
) -> Path:
    """Write the tiny checkpoint `kind` into `folder` and return it.

    `hidden`, `ffn` and `layers` make a bigger one (e.g. for a conversion that takes seconds).
    """
    folder.mkdir(parents=True, exist_ok=True)
    w = _Weights(seed)
    head_dim = hidden // HEADS
    tok_config: dict[str, Any] = {}

    if kind in ("llama3", "qwen2", "qwen3", "ministral"):
        if kind == "llama3":
            specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
            split = LLAMA3_SPLIT
        elif kind == "ministral":
            specials = ["<unk>", "<s>", "</s>"]
            split = TEKKEN_SPLIT
        else:
            specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            split = QWEN2_SPLIT
        vocab = write_bpe_tokenizer(folder, split, specials)
        ids = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
        by_name = {t["content"]: t["id"] for t in ids}
        tok_config = {
            "bos_token": specials[0] if kind != "ministral" else "<s>",
            "eos_token": specials[-1] if kind != "ministral" else "</s>",
            "chat_template": CHATML,
            "add_bos_token": kind in ("llama3", "ministral"),
        }
        bos_id = by_name[tok_config["bos_token"]]
        eos_id = by_name[tok_config["eos_token"]]
    else:
        vocab = write_spm_tokenizer(
            folder,
            add_dummy_prefix=kind not in ("gemma2", "gemma3"),
            extra_specials=("<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>")
            if kind == "phi3"
            else (),
        )
        tok_config = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
        }
        bos_id, eos_id = 1, 2
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))

    extra: dict[str, Any] = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    arch, model_type = {
        "llama3": ("LlamaForCausalLM", "llama"),
        "llama2": ("LlamaForCausalLM", "llama"),
        "mistral": ("MistralForCausalLM", "mistral"),
        "ministral": ("MistralForCausalLM", "mistral"),
        "mixtral": ("MixtralForCausalLM", "mixtral"),
        "qwen2": ("Qwen2ForCausalLM", "qwen2"),
        "qwen3": ("Qwen3ForCausalLM", "qwen3"),
        "gemma2": ("Gemma2ForCausalLM", "gemma2"),
        "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
        "phi3": ("Phi3ForCausalLM", "phi3"),
    }[kind]
    if kind == "llama3":
        extra["rope_theta"] = 500000.0
        extra["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    if kind in ("ministral", "qwen3"):
        head_dim = 32
        extra["head_dim"] = head_dim
    if kind == "mistral":
        extra["sliding_window"] = 4096
    if kind == "mixtral":
        extra.update(num_local_experts=4, num_experts_per_tok=2)
    if kind == "qwen2":
        extra["tie_word_embeddings"] = True
        extra["attention_dropout"] = 0.0
    if kind in ("qwen3", "gemma3"):
        extra["tie_word_embeddings"] = True
    if kind in ("gemma2", "gemma3"):
        extra.update(
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=128,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
        )
        extra.pop("hidden_act", None)
        if kind == "gemma2":
            extra.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        else:
            extra.update(rope_local_base_freq=10000.0, sliding_window_pattern=6)
    if kind == "phi3":
        extra.update(original_max_position_embeddings=CTX, sliding_window=None, pad_token_id=0)

    config = _base_config(arch, model_type, vocab, (hidden, ffn, layers), **extra)
    if kind in ("gemma2", "gemma3"):
        config.pop("hidden_act", None)

    gemma = kind in ("gemma2", "gemma3")
    norm_center = 0.0 if gemma else 1.0
    w.mat("model.embed_tokens.weight", vocab, hidden, scale=0.5 if not gemma else 0.1)
    w.norm("model.norm.weight", hidden, norm_center)
    if not config["tie_word_embeddings"]:
        w.mat("lm_head.weight", vocab, hidden, scale=0.3)
    q_out, kv_out = HEADS * head_dim, KV_HEADS * head_dim
    for i in range(layers):
        p = f"model.layers.{i}"
        w.norm(f"{p}.input_layernorm.weight", hidden, norm_center)
        w.norm(f"{p}.post_attention_layernorm.weight", hidden, norm_center)
        if kind == "phi3":
            w.mat(f"{p}.self_attn.qkv_proj.weight", q_out + 2 * kv_out, hidden)
            w.mat(f"{p}.mlp.gate_up_proj.weight", 2 * ffn, hidden)
        else:
            w.mat(f"{p}.self_attn.q_proj.weight", q_out, hidden)
            w.mat(f"{p}.self_attn.k_proj.weight", kv_out, hidden)
            w.mat(f"{p}.self_attn.v_proj.weight", kv_out, hidden)
        w.mat(f"{p}.self_attn.o_proj.weight", hidden, q_out)
        if kind == "qwen2":
            w.mat(f"{p}.self_attn.q_proj.bias", q_out, scale=0.05)
            w.mat(f"{p}.self_attn.k_proj.bias", kv_out, scale=0.05)
            w.mat(f"{p}.self_attn.v_proj.bias", kv_out, scale=0.05)
        if kind in ("qwen3", "gemma3"):
            w.norm(f"{p}.self_attn.q_norm.weight", head_dim, norm_center)
            w.norm(f"{p}.self_attn.k_norm.weight", head_dim, norm_center)
        if gemma:
            w.norm(f"{p}.pre_feedforward_layernorm.weight", hidden, norm_center)
            w.norm(f"{p}.post_feedforward_layernorm.weight", hidden, norm_center)
        if kind == "mixtral":
            w.mat(f"{p}.block_sparse_moe.gate.weight", 4, hidden, scale=0.5)
            for e in range(4):
                w.mat(f"{p}.block_sparse_moe.experts.{e}.w1.weight", ffn, hidden)
                w.mat(f"{p}.block_sparse_moe.experts.{e}.w2.weight", hidden, ffn)
                w.mat(f"{p}.block_sparse_moe.experts.{e}.w3.weight", ffn, hidden)
        elif kind == "phi3":
            w.mat(f"{p}.mlp.down_proj.weight", hidden, ffn)
        else:
            w.mat(f"{p}.mlp.gate_proj.weight", ffn, hidden)
            w.mat(f"{p}.mlp.up_proj.weight", ffn, hidden)
            w.mat(f"{p}.mlp.down_proj.weight", hidden, ffn)
    write_safetensors(folder / "model.safetensors", w.tensors, dtype)
    config["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": bos_id,
                "eos_token_id": eos_id,
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.9,
            }
        )
    )
    return folder


KINDS = (
    "llama2",
    "llama3",
    "mistral",
    "ministral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "phi3",
)


def shard(folder: Path, parts: int) -> list[str]:
    """Split model.safetensors into `parts` HF-style shards plus model.safetensors.index.json
    (tensors kept in file order, as transformers' save_pretrained does); return the names."""
    from safetensors.numpy import load_file, save_file

    single = folder / "model.safetensors"
    tensors = load_file(str(single))
    names = list(tensors)
    per = -(-len(names) // parts)
    weight_map: dict[str, str] = {}
    files = []
    for i in range(parts):
        file = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {name: tensors[name] for name in names[i * per : (i + 1) * per]}
        save_file(chunk, str(folder / file))
        weight_map.update(dict.fromkeys(chunk, file))
        files.append(file)
    single.unlink()
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}}
    index["weight_map"] = weight_map
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files
