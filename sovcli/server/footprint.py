"""How much memory a served model takes, estimated before it is loaded (for the budget).

The estimate is the GGUF file(s) (weights are mapped and touched as they are used) plus the
KV cache llama.cpp allocates: K and V, 16-bit, for every layer, for `ctx x parallel` tokens,
plus the prompt cache's RAM. It leaves out llama.cpp's compute buffers (tens of MB), so a
budget should keep some headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sovcli.store.names import shard_group

DEFAULT_CTX = 4096  # the engine's default context per sequence (min(model, 4096))
KV_BYTES_PER_VALUE = 2  # f16 K and V


@dataclass(frozen=True)
class Shape:
    """What the KV cache size depends on, read from the GGUF header."""

    n_layer: int
    n_kv_heads: int
    head_dim: int
    n_ctx_train: int | None


def file_bytes(path: str) -> int:
    """Size of the model's file, with all its shards (0 when it cannot be read)."""
    first = Path(path)
    names = shard_group(first.name, {p.name for p in first.parent.glob("*.gguf")})
    total = 0
    for name in names:
        try:
            total += (first.parent / name).stat().st_size
        except OSError:
            continue
    return total


def read_shape(path: str) -> Shape | None:
    """The model's layer and head counts, or None when the header cannot be read."""
    from sovcli.store.ggufmeta import read_metadata

    try:
        meta = read_metadata([Path(path)])["metadata"]
    except Exception:  # not a (complete) GGUF: the budget then counts the file alone
        return None
    arch = meta.get("general.architecture")

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer head counts (some architectures)
            value = max(value) if value else None
        return int(value) if isinstance(value, (int, float)) else None

    n_layer, n_head = number("block_count"), number("attention.head_count")
    n_embd = number("embedding_length")
    if not n_layer or not n_head or not n_embd:
        return None
    head_dim = number("attention.key_length") or n_embd // n_head
    n_kv = number("attention.head_count_kv") or n_head
    return Shape(n_layer, n_kv, head_dim, number("context_length"))


def kv_bytes(shape: Shape | None, n_ctx: int | None, parallel: int) -> int:
    """Bytes of the KV cache for `parallel` sequences of `n_ctx` tokens."""
    if shape is None:
        return 0
    ctx = n_ctx or min(shape.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
    per_token = 2 * shape.n_layer * shape.n_kv_heads * shape.head_dim * KV_BYTES_PER_VALUE
    return per_token * ctx * parallel


def estimate_bytes(
    path: str, shape: Shape | None, n_ctx: int | None, parallel: int, prompt_cache_mib: int
) -> int:
    """The whole estimate: file, KV cache, prompt cache."""
    return file_bytes(path) + kv_bytes(shape, n_ctx, parallel) + prompt_cache_mib * 2**20


def parse_size(text: str) -> int:
    """`8G`, `512M`, `1.5GiB`, `2000000000` as bytes (powers of 1024 for K/M/G/T).
    Raises ValueError for anything else."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    for suffix, power in (("K", 1), ("M", 2), ("G", 3), ("T", 4)):
        if value.endswith(suffix):
            value, factor = value[:-1], 1024**power
            break
    number = float(value)
    if not number > 0 or number * factor > 2**62:
        raise ValueError(text)
    return int(number * factor)


def format_size(n: int) -> str:
    """`98 MB`, `1.2 GB`: sizes as ps shows them (powers of 1000, like ollama)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"
