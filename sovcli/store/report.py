"""What `list` and `show` report about an installed model, as JSON-ready dicts."""

from __future__ import annotations

from typing import Any

from sovcli.store.model import InstalledModel


def model_row(model: InstalledModel) -> dict[str, Any]:
    """One installed model as `sovcli list --json` prints it."""
    m = model.manifest
    return {
        "model": model.ref,
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


def show_report(model: InstalledModel) -> dict[str, Any]:
    """The GGUF header of every shard and the manifest: what `sovcli show --json` prints.

    Keys: model, path, gguf (architecture, parameter_count, context_length, ...), metadata
    (every GGUF key), manifest, manifest_sha256.
    """
    from sovcli.store.ggufmeta import read_metadata

    shards = sorted(
        f["path"] for f in model.manifest.get("files", []) if f["path"].endswith(".gguf")
    )
    gguf_files = [model.directory / p for p in shards] or [model.gguf_path]
    meta = read_metadata(gguf_files)
    keys = meta.pop("metadata")
    return {
        "model": model.ref,
        "path": str(model.gguf_path),
        "gguf": meta,
        "metadata": keys,
        "manifest": model.manifest,
        "manifest_sha256": model.manifest_sha256,
    }
