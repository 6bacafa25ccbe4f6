"""Read a GGUF's header with `gguf.GGUFReader` (mmap; cheap) and check it is whole.

Used for manifests (architecture, parameter count, context length, quantization) and for
rejecting files that are not GGUF or are truncated, before anything is registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sovcli.errors import IntegrityError

GGUF_MAGIC = b"GGUF"
_SCALAR_KEYS_SKIPPED = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                        "tokenizer.ggml.merges")


def check_magic(path: Path) -> None:
    """Raise IntegrityError unless `path` starts with the GGUF magic."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise IntegrityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head != GGUF_MAGIC:
        raise IntegrityError(
            f"{Path(path).name} is not a GGUF file (bad magic {head!r})",
            hint="Pass a .gguf model file; safetensors checkpoints are converted with `sovcli convert`.",
        )


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # older gguf: decode by hand
        try:
            import gguf

            if field.types and field.types[0] == gguf.GGUFValueType.STRING:
                return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
            if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
                return None
            return field.parts[field.data[0]].tolist()[0]
        except Exception:
            return None


def _open_reader(path: Path) -> Any:
    import gguf

    check_magic(path)
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as exc:
        raise IntegrityError(
            f"{Path(path).name} is not a valid GGUF file (truncated or corrupt: {exc})",
            hint="Delete it and pull again, or re-export it from the original checkpoint.",
        ) from exc


def _check_complete(reader: Any, path: Path) -> tuple[int, int]:
    """Raise IntegrityError when a tensor's data lies beyond the end of the file.

    Returns `(tensor_count, parameter_count)` of this file.
    """
    size = Path(path).stat().st_size
    params = 0
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise IntegrityError(
                f"{Path(path).name} is truncated: tensor {tensor.name} ends at byte {end:,} "
                f"but the file has {size:,}",
                hint="Delete it and pull again (an interrupted copy or download).",
            )
        params += int(tensor.n_elements)
    return len(reader.tensors), params


def file_type_name(value: int | None) -> str | None:
    """`general.file_type` as a quant name (7 -> 'Q8_0'), or None."""
    if value is None:
        return None
    try:
        import gguf

        name = gguf.LlamaFileType(int(value)).name
    except Exception:
        return None
    return name.removeprefix("MOSTLY_").replace("ALL_", "")


def read_metadata(paths: list[Path]) -> dict[str, Any]:
    """Summary metadata of a (possibly split) GGUF; validates every file.

    Returns a dict with architecture, name, parameter_count, context_length, quantization,
    file_type, tensor_count, gguf_version, chat_template (bool) and a `metadata` dict of the
    scalar keys of the first file (tokenizer arrays left out).
    """
    if not paths:
        raise IntegrityError("no GGUF file to read")
    first_reader = None
    total_params = 0
    total_tensors = 0
    for path in paths:
        reader = _open_reader(path)
        count, params = _check_complete(reader, path)
        total_tensors += count
        total_params += params
        if first_reader is None:
            first_reader = reader
    assert first_reader is not None
    scalars: dict[str, Any] = {}
    for key, field in first_reader.fields.items():
        if key.startswith("GGUF.") or key in _SCALAR_KEYS_SKIPPED:
            continue
        value = _field_value(field)
        if isinstance(value, (list, tuple)) and len(value) > 64:
            value = f"<array of {len(value)}>"
        elif isinstance(value, str) and len(value) > 4096:
            value = value[:4096] + "..."
        scalars[key] = value
    arch = scalars.get("general.architecture")
    ctx = scalars.get(f"{arch}.context_length") if arch else None
    file_type = scalars.get("general.file_type")
    declared = scalars.get("general.parameter_count")
    return {
        "architecture": arch,
        "model_name": scalars.get("general.name"),
        "parameter_count": int(declared) if isinstance(declared, int) else total_params,
        "context_length": int(ctx) if isinstance(ctx, int) else None,
        "quantization": file_type_name(file_type if isinstance(file_type, int) else None),
        "file_type": file_type,
        "tensor_count": total_tensors,
        "chat_template": "tokenizer.chat_template" in scalars,
        "metadata": scalars,
    }
