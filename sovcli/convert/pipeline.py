"""Checkpoint -> GGUF -> quantized GGUF, with the provenance record `sovcli pull` stores.

`convert_checkpoint_to_gguf` converts a verified Hugging Face checkpoint folder to an f16 or
bf16 intermediate beside the output, quantizes it with llama.cpp, removes the intermediate
(unless asked to keep it) and returns the record that goes under "conversion" in the model's
manifest: every input file with its sha256, the converter and llama.cpp versions, the types,
the imatrix hash and the output's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sovcli.errors import ConversionError
from sovcli.progress import Progress

from . import CONVERTER_SCHEMA_VERSION

# Files of a checkpoint folder that the converter reads (weights are added from the index).
_INPUT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tekken.json",
    "chat_template.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
    "README.md",
)

FLOAT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def _intermediate_outtype(checkpoint: Any) -> str:
    """bf16 when the publisher's weights are bf16 (lossless), else f16."""
    dtypes = [ref.dtype for ref in checkpoint.tensors.values()]
    return "bf16" if dtypes and dtypes.count("BF16") * 2 >= len(dtypes) else "f16"


def input_files(checkpoint: Any) -> list[Path]:
    """The files of the checkpoint folder that the conversion reads, in a stable order."""
    folder = Path(checkpoint.path)
    files = [folder / name for name in _INPUT_FILES if (folder / name).is_file()]
    files.extend(checkpoint.weight_files)
    return sorted(set(files), key=lambda p: p.name)


def convert_checkpoint_to_gguf(
    checkpoint_dir: Path,
    out_path: Path,
    *,
    quant: str,
    keep_intermediate: bool,
    imatrix: Path | None = None,
    threads: int | None = None,
    source_repo: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert `checkpoint_dir` and quantize to `quant`, writing `out_path` atomically.

    Returns the manifest record (JSON-ready). Raises ConversionError / UsageError subclasses
    of SovcliError; on failure no partial output or intermediate is left behind. Both steps
    report to `progress`.
    """
    from sovcli import __version__
    from sovcli.store.hashing import sha256_file

    from .checkpoint import open_checkpoint
    from .converter import convert_checkpoint
    from .quantize import llama_cpp_label, normalize_type, quantize_gguf

    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    quant_name = normalize_type(quant)
    checkpoint = open_checkpoint(checkpoint_dir)
    files = input_files(checkpoint)
    inputs = [{"file": f.name, "size": f.stat().st_size, "sha256": sha256_file(f)} for f in files]

    direct = FLOAT_TYPES.get(quant_name)
    outtype = direct or _intermediate_outtype(checkpoint)
    intermediate = (
        out_path if direct else out_path.with_name(f".{out_path.stem}.{outtype}.intermediate.gguf")
    )
    quant_result = None
    try:
        converted = convert_checkpoint(
            checkpoint_dir,
            intermediate,
            outtype=outtype,
            source_repo=source_repo,
            checkpoint=checkpoint,
            progress=progress,
        )
        if not direct:
            quant_result = quantize_gguf(
                intermediate,
                quant_name,
                out_path,
                imatrix=imatrix,
                threads=threads,
                progress=progress,
            )
    except BaseException:
        if not direct:
            intermediate.unlink(missing_ok=True)
        raise
    kept: str | None = None
    if not direct:
        if keep_intermediate:
            kept_path = out_path.with_name(f"{out_path.stem}.{outtype}.gguf")
            intermediate.replace(kept_path)
            kept = str(kept_path)
        else:
            intermediate.unlink(missing_ok=True)
    if not out_path.is_file():
        raise ConversionError(f"conversion finished without writing {out_path}")
    return {
        "schema": 1,
        "converter": {
            "name": "sovcli.convert",
            "sovcli_version": __version__,
            "schema_version": CONVERTER_SCHEMA_VERSION,
        },
        "inputs": inputs,
        "architecture": converted.architecture,
        "gguf_architecture": converted.gguf_architecture,
        "tokenizer": converted.tokenizer,
        "general": converted.general,
        "outtype": outtype,
        "quant_type": quant_name,
        "imatrix_sha256": quant_result.imatrix if quant_result else None,
        "llama_cpp": llama_cpp_label(),
        "threads": quant_result.threads if quant_result else None,
        "seconds": {
            "convert": round(converted.seconds, 3),
            "quantize": round(quant_result.seconds, 3) if quant_result else 0.0,
        },
        "intermediate": kept,
        "output": {
            "file": out_path.name,
            "size": out_path.stat().st_size,
            "sha256": sha256_file(out_path),
        },
    }
