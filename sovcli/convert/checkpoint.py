"""Read a Hugging Face checkpoint folder: config, safetensors headers, one tensor at a time.

The safetensors format is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw data. We parse the header ourselves so
that bf16 tensors (which numpy cannot name) load as raw uint16, and we read each tensor with
a plain `readinto` so that only the tensor being converted is in memory.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.errors import ConversionError, ModelNotFoundError

# safetensors dtype -> (numpy dtype string used to hold the raw bytes, element size).
# BF16 is held as uint16 (its bit pattern); conversion to float32 is a shift.
_ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("u1", 1),
}

_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, dtype, shape and byte range of its data."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the raw data in bytes."""
        return self.end - self.start

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class Checkpoint:
    """A Hugging Face checkpoint folder with its config and tensor index (no data loaded)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    weight_files: list[Path] = field(default_factory=list)

    def json_file(self, name: str) -> dict[str, Any] | None:
        """Parse `name` in the folder as JSON, or None when it is absent."""
        return read_json(self.path / name, required=False)

    @property
    def architecture(self) -> str:
        """The first entry of config.json's `architectures`."""
        archs = self.config.get("architectures") or []
        return str(archs[0]) if archs else ""


def read_json(path: Path, *, required: bool = True) -> dict[str, Any] | None:
    """Parse a JSON object file; raise ConversionError when it is malformed."""
    if not path.is_file():
        if required:
            raise ConversionError(
                f"{path.name} is missing in {path.parent}",
                hint="A Hugging Face checkpoint folder holds config.json and *.safetensors.",
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a JSON object")
    return data


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Index the tensors of one .safetensors file without reading their data."""
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ConversionError(f"{path.name} is too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER_BYTES:
                raise ConversionError(f"{path.name} has an implausible safetensors header size")
            header_bytes = fh.read(header_len)
        file_size = path.stat().st_size
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path.name} has a corrupt safetensors header") from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path.name} has a corrupt safetensors header")
    data_start = 8 + header_len
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in _ST_DTYPES:
            raise ConversionError(f"{path.name}: tensor {name} has unsupported dtype {dtype}")
        begin, end, shape = _layout(path, name, info)
        ref = TensorRef(name, path, dtype, shape, data_start + begin, data_start + end)
        if ref.end > file_size or ref.nbytes != ref.n_elements * _ST_DTYPES[dtype][1]:
            raise ConversionError(
                f"{path.name}: tensor {name} is truncated or inconsistent",
                hint="The download may be incomplete; fetch the checkpoint again.",
            )
        refs[name] = ref
    return refs


INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.safetensors$")
_SHOWN = 5  # names listed in an error message before "..."


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _read_index(folder: Path) -> dict[str, str] | None:
    """The index's weight map (tensor name -> shard file), or None without an index."""
    index = folder / INDEX_NAME
    if not index.is_file():
        return None
    weight_map = (read_json(index) or {}).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ConversionError(f"{INDEX_NAME} has no valid weight_map")
    bad = [v for v in weight_map.values() if Path(v).name != v or v in (".", "..")]
    if bad:
        raise ConversionError(f"{INDEX_NAME} names a shard outside the folder: {bad[0]!r}")
    return weight_map


def _layout(path: Path, name: str, info: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """(begin, end, shape) of one header entry, checked to be non-negative whole numbers."""
    offsets, shape = info.get("data_offsets"), info.get("shape")
    if (
        not isinstance(offsets, list)
        or not isinstance(shape, list)
        or len(offsets) != 2
        or not all(type(n) is int and n >= 0 for n in [*offsets, *shape])
        or offsets[0] > offsets[1]
    ):
        raise ConversionError(f"{path.name}: tensor {name} has a corrupt header entry")
    return offsets[0], offsets[1], tuple(shape)


def _weight_files(folder: Path, weight_map: dict[str, str] | None) -> list[Path]:
    if weight_map is not None:
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ConversionError(
                f"shard {missing[0]} named in {INDEX_NAME} is missing",
                hint="Download every shard listed in the index.",
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    # Consolidated Mistral files duplicate the HF ones; prefer the HF layout.
    hf_files = [f for f in files if not f.name.startswith("consolidated")]
    files = hf_files or files
    _check_shard_series(files)
    return files


def _check_shard_series(files: list[Path]) -> None:
    """Without an index, `model-00001-of-00003.safetensors` names must form a full series."""
    series: dict[tuple[str, int], set[int]] = {}
    for file in files:
        match = _SHARD_RE.match(file.name)
        if match:
            key = (match["stem"], int(match["total"]))
            series.setdefault(key, set()).add(int(match["part"]))
    for (stem, total), parts in sorted(series.items()):
        absent = [f"{stem}-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
        absent = [name for i, name in enumerate(absent, 1) if i not in parts]
        if absent:
            raise ConversionError(
                f"{len(absent)} of {total} shards are missing: {_listing(absent)}",
                hint=f"Copy every shard (and {INDEX_NAME}) of the checkpoint.",
            )


def _check_index(weight_map: dict[str, str], tensors: dict[str, TensorRef]) -> None:
    """Refuse a stale index: every tensor it lists must be in its shard, and no others."""
    missing = sorted(name for name in weight_map if name not in tensors)
    if missing:
        files = sorted({weight_map[name] for name in missing})
        raise ConversionError(
            f"{len(missing)} tensor(s) listed in {INDEX_NAME} are not in their shard: "
            f"{_listing(missing)} (expected in {_listing(files)})",
            hint="The index is stale or a shard is an older or partial copy; download the "
            "checkpoint again.",
        )
    extra = sorted(name for name in tensors if name not in weight_map)
    if extra:
        raise ConversionError(
            f"{len(extra)} tensor(s) in the shards are not listed in {INDEX_NAME}: "
            f"{_listing(extra)}",
            hint="The index does not belong to these shards; download the checkpoint again.",
        )


def open_checkpoint(folder: Path) -> Checkpoint:
    """Index a checkpoint folder: config.json plus every safetensors tensor header.

    A sharded checkpoint must be complete: its index must match the shards' tensors, and
    without an index a `-0000k-of-0000n` series must have every part.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{folder} is not a directory",
            hint="Pass the folder of a Hugging Face checkpoint (config.json + *.safetensors).",
        )
    config = read_json(folder / "config.json") or {}
    weight_map = _read_index(folder)
    files = _weight_files(folder, weight_map)
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pth")):
            raise ConversionError(
                f"{folder} holds only PyTorch pickle weights (*.bin / *.pth)",
                hint="sovcli converts safetensors only (pickles can run code); use the "
                "publisher's safetensors revision.",
            )
        raise ConversionError(
            f"no *.safetensors files in {folder}",
            hint="A Hugging Face checkpoint folder holds config.json and *.safetensors.",
        )
    ckpt = Checkpoint(path=folder, config=config, weight_files=files)
    for file in files:
        for name, ref in read_safetensors_header(file).items():
            if name in ckpt.tensors:
                raise ConversionError(f"tensor {name} appears in two shards")
            ckpt.tensors[name] = ref
    if weight_map is not None:
        _check_index(weight_map, ckpt.tensors)
    return ckpt


def read_tensor(ref: TensorRef, row_start: int = 0, row_count: int | None = None):
    """Read a tensor's raw data (or rows [row_start, row_start + row_count) of it) into a
    fresh numpy array; bf16 stays as uint16 bits."""
    import numpy as np

    np_dtype, size = _ST_DTYPES[ref.dtype]
    rows = ref.shape[0] if ref.shape else 1
    row_count = rows - row_start if row_count is None else row_count
    row_elems = ref.n_elements // rows if rows else 0
    shape = (row_count, *ref.shape[1:]) if ref.shape else ()
    out = np.empty(shape, dtype=np_dtype)
    nbytes = row_count * row_elems * size
    with open(ref.file, "rb") as fh:
        fh.seek(ref.start + row_start * row_elems * size)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = fh.readinto(view)
    if got != nbytes:
        raise ConversionError(f"{ref.file.name}: tensor {ref.name} is truncated")
    return out


def to_float32(raw, st_dtype: str):
    """Convert raw tensor data as read by `read_tensor` to float32."""
    import numpy as np

    if st_dtype == "BF16":
        bits = raw.astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)
    if raw.dtype == np.float32:
        return raw
    return raw.astype(np.float32)
