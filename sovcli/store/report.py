"""What `list` and `show` report about an installed model, as JSON-ready dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sovcli.store.model import InstalledModel
from sovcli.store.names import shard_group
from sovcli.store.registry import BrokenModel


def model_row(model: InstalledModel) -> dict[str, Any]:
    """One installed model as `sovcli list --json` prints it (`status` "ok")."""
    m = model.manifest
    return {
        "model": model.ref,
        "status": "ok",
        "name": model.name,
        "tag": model.tag,
        "size": m.get("total_size"),
        "quantization": m.get("quantization"),
        "architecture": m.get("architecture"),
        "parameter_count": m.get("parameter_count"),
        "context_length": m.get("context_length"),
        "license": m.get("license"),
        "source": m.get("source"),
        "created_at": m.get("created_at"),
        "path": str(model.gguf_path),
    }


def broken_row(model: BrokenModel) -> dict[str, Any]:
    """A broken model directory as `sovcli list --json` prints it: `status` "broken", the
    reason in `error`, the other keys of `model_row` null."""
    keys = ("size", "quantization", "architecture", "parameter_count", "context_length")
    return {
        "model": model.ref,
        "status": "broken",
        "error": model.reason,
        "name": model.name,
        "tag": model.tag,
        **dict.fromkeys(keys),
        "license": None,
        "source": None,
        "created_at": None,
        "path": str(model.directory),
    }


def gguf_files(model: InstalledModel) -> list[Path]:
    """The file llama.cpp loads and, for a split model, the other shards of that same model
    (what `show` reads is exactly what `run` loads)."""
    files = model.manifest.get("files")
    if not files:
        return [model.gguf_path]
    group = shard_group(model.manifest["gguf"], {f["path"] for f in files})
    return [model.directory / rel for rel in group]


def show_report(model: InstalledModel) -> dict[str, Any]:
    """The GGUF header of every shard and the manifest: what `sovcli show --json` prints.

    Keys: model, path, gguf (architecture, parameter_count, context_length, ...), metadata
    (every GGUF key), manifest, manifest_sha256.
    """
    from sovcli.store.ggufmeta import read_metadata

    meta = read_metadata(gguf_files(model))
    keys = meta.pop("metadata")
    return {
        "model": model.ref,
        "path": str(model.gguf_path),
        "gguf": meta,
        "metadata": keys,
        "manifest": model.manifest,
        "manifest_sha256": model.manifest_sha256,
    }
