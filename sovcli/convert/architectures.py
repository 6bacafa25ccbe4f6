"""Per-architecture rules: GGUF hyperparameters and how each HF tensor becomes a GGUF tensor.

Facts followed (from llama.cpp's own converter, re-implemented here without torch):
* Llama-family `q_proj` / `k_proj` are permuted so the two rotary halves interleave per head
  (for `k_proj` the KV head count is used); Qwen, Gemma and Phi-3 are stored unpermuted.
* Mixtral's per-expert `w1/w2/w3` are stacked into one 3-D tensor per layer
  (`ffn_gate_exps`, `ffn_down_exps`, `ffn_up_exps`).
* Gemma's RMSNorm multiplies by (1 + weight): norm weights are stored with the 1 added.
* Llama 3.1+ "llama3" rope scaling becomes a `rope_freqs` tensor of per-dimension factors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sovcli.errors import ConversionError

from .checkpoint import Checkpoint, TensorRef


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face architecture maps onto a llama.cpp architecture."""

    gguf_arch: str  # llama.cpp architecture name, e.g. "llama"
    family: str  # what users call it, for messages
    permute_qk: bool = False
    norm_plus_one: bool = False
    skip_lm_head: bool = False


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", "Llama 2/3.x", permute_qk=True),
    "MistralForCausalLM": ArchSpec("llama", "Mistral / Ministral", permute_qk=True),
    "MixtralForCausalLM": ArchSpec("llama", "Mixtral (MoE)", permute_qk=True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", "Qwen2 / Qwen2.5"),
    "Qwen3ForCausalLM": ArchSpec("qwen3", "Qwen3"),
    "Gemma2ForCausalLM": ArchSpec("gemma2", "Gemma 2", norm_plus_one=True, skip_lm_head=True),
    "Gemma3ForCausalLM": ArchSpec("gemma3", "Gemma 3 (text)", norm_plus_one=True),
    "Phi3ForCausalLM": ArchSpec("phi3", "Phi-3 / Phi-3.5"),
}


def supported_architectures() -> list[str]:
    """Hugging Face architecture names `convert` accepts."""
    return sorted(ARCHITECTURES)


def spec_for(checkpoint: Checkpoint) -> ArchSpec:
    """The ArchSpec of a checkpoint, or a ConversionError naming the supported ones."""
    arch = checkpoint.architecture
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    shown = arch or "(no 'architectures' in config.json)"
    raise ConversionError(
        f"architecture {shown} is not supported by sovcli convert",
        hint="Supported: "
        + ", ".join(f"{name} ({ARCHITECTURES[name].family})" for name in supported_architectures())
        + ".",
    )


# ----------------------------------------------------------------------------- hparams


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either transformers' older (`rope_scaling`, `rope_theta`) or newer
    (`rope_parameters`) config layout."""
    params: dict[str, Any] = {}
    if isinstance(config.get("rope_scaling"), dict):
        params.update(config["rope_scaling"])
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params["type"]
    if "rope_theta" in config:
        params["rope_theta"] = config["rope_theta"]
    if isinstance(config.get("rope_parameters"), dict):
        rp = config["rope_parameters"]
        params.update(rp.get("full_attention", rp))
    return params


def sliding_rope_theta(config: dict[str, Any]) -> float | None:
    """Rope base of the sliding-window layers: `rope_local_base_freq` (transformers 4) or
    `rope_parameters.sliding_attention.rope_theta` (transformers 5), else None."""
    if config.get("rope_local_base_freq"):
        return float(config["rope_local_base_freq"])
    params = config.get("rope_parameters")
    sliding = params.get("sliding_attention") if isinstance(params, dict) else None
    if isinstance(sliding, dict) and isinstance(sliding.get("rope_theta"), (int, float)):
        return float(sliding["rope_theta"])
    return None


def head_dim(config: dict[str, Any]) -> int:
    """Per-head dimension: explicit `head_dim` or hidden_size / num_attention_heads."""
    explicit = config.get("head_dim")
    if explicit:
        return int(explicit)
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def _require(config: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ConversionError(
            f"config.json lacks {', '.join(missing)}",
            hint="The checkpoint's config.json looks incomplete; fetch it again.",
        )


def _whole(config: dict[str, Any], key: str) -> int:
    value = config[key]
    if type(value) is not int:
        raise ConversionError(f"config.json's {key} is {value!r}, not a whole number")
    return value


def write_hparams(writer: Any, spec: ArchSpec, config: dict[str, Any]) -> None:
    """Add the architecture hyperparameters to a GGUFWriter."""
    import gguf

    _require(
        config,
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    rope = rope_parameters(config)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if "rope_theta" in rope and spec.gguf_arch != "gemma2":
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    if "head_dim" in config and spec.gguf_arch != "phi3":
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if spec.gguf_arch in ("llama",):
        writer.add_vocab_size(int(config.get("vocab_size", 0)))
        writer.add_rope_dimension_count(head_dim(config))
    if config.get("num_local_experts"):
        writer.add_expert_count(int(config["num_local_experts"]))
        writer.add_expert_used_count(int(config.get("num_experts_per_tok", 2)))

    rope_type = str(rope.get("rope_type", "")).lower()
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))

    if spec.gguf_arch == "gemma2":
        _require(config, "head_dim")
        writer.add_attn_logit_softcapping(float(config.get("attn_logit_softcapping") or 50.0))
        writer.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or 30.0))
        writer.add_sliding_window(int(config.get("sliding_window", 4096)))
    elif spec.gguf_arch == "gemma3":
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        if config.get("sliding_window_pattern") != 1 and config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        swa_base = sliding_rope_theta(config)
        if swa_base:
            writer.add_rope_freq_base_swa(swa_base)
    elif spec.gguf_arch == "phi3":
        rot_pct = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
        writer.add_rope_dimension_count(int(rot_pct * int(config["hidden_size"])) // n_head)
        orig = rope.get("original_max_position_embeddings") or config.get(
            "original_max_position_embeddings", config.get("max_position_embeddings", 4096)
        )
        writer.add_rope_scaling_orig_ctx_len(int(orig))
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
        if rope.get("long_factor"):
            scale = int(config["max_position_embeddings"]) / int(orig)
            attn = math.sqrt(1 + math.log(scale) / math.log(int(orig))) if scale > 1.0 else 1.0
            writer.add_rope_scaling_attn_factors(attn)


# ----------------------------------------------------------------------------- tensors


@dataclass
class PlannedTensor:
    """One GGUF tensor: its name, logical shape (row-major, HF order), and how to make it."""

    name: str
    shape: tuple[int, ...]
    parts: list[TensorRef] = field(default_factory=list)  # >1 part: stacked along a new axis 0
    transform: Callable[[Any], Any] | None = None  # applied to each part's raw array
    needs_float: bool = False  # transform works on float32 (not on raw bf16 bits)
    elementwise: bool = True  # transform can be applied to row blocks independently
    generated: Any = None  # a ready float32 array (e.g. rope_freqs)
    force_f32: bool = False

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


def _permute_fn(n_head: int):
    def permute(w):
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    return permute


def _plus_one(w):
    return w + 1.0


_EXPERT_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$"
)
_EXPERT_NAMES = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}
_SKIP_RE = re.compile(r"(rotary_emb\.inv_freq|\.attn\.masked_bias|\.attn\.bias)$")


def llama3_rope_factors(config: dict[str, Any]) -> list[float] | None:
    """Per-dimension rope factors for "llama3" rope scaling (Llama 3.1+), else None."""
    rope = rope_parameters(config)
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    base = float(rope.get("rope_theta", 10000.0))
    dim = head_dim(config)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors: list[float] = []
    for i in range(0, dim, 2):
        freq = 1.0 / (base ** (i / dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def plan_tensors(checkpoint: Checkpoint, spec: ArchSpec) -> list[PlannedTensor]:
    """List every output tensor in file order, without reading any tensor data."""
    import gguf
    import numpy as np

    config = checkpoint.config
    _require(config, "num_hidden_layers", "num_attention_heads")
    n_layers = _whole(config, "num_hidden_layers")
    check_layer_count(n_layers, "config.json")
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    tied = bool(config.get("tie_word_embeddings", False))

    planned: list[PlannedTensor] = []
    experts: dict[tuple[int, str], dict[int, TensorRef]] = {}
    unknown: list[str] = []

    factors = llama3_rope_factors(config) if spec.gguf_arch == "llama" else None
    if factors is not None:
        planned.append(
            PlannedTensor(
                "rope_freqs.weight",
                (len(factors),),
                generated=np.asarray(factors, dtype=np.float32),
                force_f32=True,
            )
        )
    if spec.gguf_arch == "phi3":
        rope = rope_parameters(config)
        for key, gname in (
            ("long_factor", "rope_factors_long"),
            ("short_factor", "rope_factors_short"),
        ):
            if rope.get(key):
                arr = np.asarray(rope[key], dtype=np.float32)
                planned.append(
                    PlannedTensor(f"{gname}.weight", arr.shape, generated=arr, force_f32=True)
                )

    for name, ref in checkpoint.tensors.items():
        if _SKIP_RE.search(name):
            continue
        if name == "lm_head.weight" and (spec.skip_lm_head or tied):
            continue
        match = _EXPERT_RE.match(name)
        if match:
            layer, expert, which = int(match[1]), int(match[2]), match[3]
            experts.setdefault((layer, which), {})[expert] = ref
            continue
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            unknown.append(name)
            continue
        item = PlannedTensor(new_name, ref.shape, parts=[ref])
        if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            item.transform, item.elementwise = _permute_fn(n_head), False
        elif spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            item.transform, item.elementwise = _permute_fn(n_head_kv), False
        elif spec.norm_plus_one and name.endswith("norm.weight"):
            item.transform, item.needs_float = _plus_one, True
        if new_name.endswith("ffn_gate_inp.weight"):
            item.force_f32 = True
        planned.append(item)

    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) have no llama.cpp counterpart, e.g. {unknown[0]}",
            hint="The checkpoint may be a variant (vision, adapter, quantized) that sovcli does "
            "not convert.",
        )

    n_experts = int(config.get("num_local_experts") or 0)
    for (layer, which), by_index in sorted(experts.items()):
        if sorted(by_index) != list(range(n_experts)):
            raise ConversionError(
                f"layer {layer} has {len(by_index)} '{which}' experts, config says {n_experts}"
            )
        parts = [by_index[i] for i in range(n_experts)]
        planned.append(
            PlannedTensor(
                f"blk.{layer}.{_EXPERT_NAMES[which]}.weight",
                (n_experts, *parts[0].shape),
                parts=parts,
            )
        )

    names = {p.name for p in planned}
    if "token_embd.weight" not in names:
        raise ConversionError("the checkpoint has no token embedding (model.embed_tokens.weight)")
    if "output.weight" not in names and not tied and spec.gguf_arch not in ("gemma2", "gemma3"):
        raise ConversionError(
            "the checkpoint has no lm_head.weight and does not tie its embeddings",
            hint="The checkpoint looks incomplete; check that every shard is present.",
        )
    check_tensor_set(names, spec.gguf_arch, n_layers, f"the checkpoint ({spec.family})")
    return planned


# ----------------------------------------------------------------------------- completeness

_ATTENTION = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")
_DENSE_FFN = ("ffn_gate", "ffn_up", "ffn_down")
_MOE_FFN = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
REQUIRED_BLOCK_TENSORS: dict[str, tuple[str, ...]] = {
    "llama": (*_ATTENTION, "ffn_norm"),
    "qwen2": (*_ATTENTION, "ffn_norm"),
    "qwen3": (*_ATTENTION, "attn_q_norm", "attn_k_norm", "ffn_norm"),
    "gemma2": (*_ATTENTION, "post_attention_norm", "ffn_norm", "post_ffw_norm"),
    "gemma3": (
        *_ATTENTION,
        "attn_q_norm",
        "attn_k_norm",
        "post_attention_norm",
        "ffn_norm",
        "post_ffw_norm",
    ),
    "phi3": ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"),
}
"""Weights every block needs, per llama.cpp architecture (the FFN is added: dense or MoE)."""

MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def tensor_set_problems(
    names: set[str], gguf_arch: str, n_layers: int
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) GGUF tensor names for a model llama.cpp must be able to load.

    Only for the architectures in REQUIRED_BLOCK_TENSORS, whose layers are all alike (hybrid
    and interleaved models of other architectures differ from layer to layer: not judged).
    Missing: the global tensors and per-block weights the architecture needs, and any kind of
    block tensor that some blocks have and others lack (a lost shard leaves such holes).
    Unexpected: tensors of blocks beyond `n_layers` (llama.cpp refuses a tensor count that
    does not match). `output.weight` is never required: without it llama.cpp uses the
    token embedding (tied embeddings).
    """
    if gguf_arch not in REQUIRED_BLOCK_TENSORS:
        return [], []
    kinds: set[str] = set()
    unexpected: list[str] = []
    for name in names:
        match = _BLOCK_RE.match(name)
        if match:
            kinds.add(match[2])
            if int(match[1]) >= n_layers:
                unexpected.append(name)
    required = ["token_embd.weight", "output_norm.weight"]
    block = [f"{kind}.weight" for kind in REQUIRED_BLOCK_TENSORS[gguf_arch]]
    if gguf_arch != "phi3":
        moe = any(kind.startswith("ffn_gate_exps") for kind in kinds)
        block += [f"{kind}.weight" for kind in (_MOE_FFN if moe else _DENSE_FFN)]
    kinds.update(block)
    for layer in range(n_layers):
        required += [f"blk.{layer}.{kind}" for kind in sorted(kinds)]
    missing = [name for name in required if name not in names]
    return missing, sorted(unexpected, key=_natural)


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_layer_count(n_layers: int, what: str) -> None:
    """Refuse a layer count llama.cpp cannot load (a damaged or hostile config)."""
    if not 0 < n_layers <= MAX_LAYERS:
        raise ConversionError(
            f"{what} declares {n_layers} layers; llama.cpp loads 1 to {MAX_LAYERS}",
            hint="The metadata is damaged or was not written for llama.cpp.",
        )


def check_tensor_set(names: set[str], gguf_arch: str, n_layers: int, what: str) -> None:
    """Raise ConversionError naming the tensors `what` lacks (or has too many of) for
    llama.cpp to load it as `gguf_arch` with `n_layers` blocks."""
    check_layer_count(n_layers, what)
    missing, unexpected = tensor_set_problems(names, gguf_arch, n_layers)
    if missing:
        raise ConversionError(
            f"{what} lacks {len(missing)} tensor(s) llama.cpp needs: {_names(missing)}",
            hint="A shard is missing or the index is stale: copy or download the complete "
            "checkpoint (every shard listed in model.safetensors.index.json).",
        )
    if unexpected:
        raise ConversionError(
            f"{what} has tensors for more than its {n_layers} layers: {_names(unexpected)}",
            hint="config.json's num_hidden_layers does not match the weights.",
        )


def _names(names: list[str], shown: int = 5) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
