"""The provenance manifest written beside every installed model (`manifest.json`)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli import __version__, llamacpp
from sovcli.errors import StoreError

MANIFEST_SCHEMA = 1


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(
    *,
    name: str,
    tag: str,
    files: list[dict[str, Any]],
    gguf_file: str,
    source: dict[str, Any],
    meta: dict[str, Any],
    license: str | None = None,
    gated: bool | None = None,
    description: str | None = None,
    conversion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dict; `files` is a list of {path, sha256, size}."""
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "tag": tag,
        "format": "gguf",
        "gguf": gguf_file,
        "files": files,
        "total_size": sum(int(f["size"]) for f in files),
        "source": source,
        "license": license,
        "gated": gated,
        "description": description,
        "architecture": meta.get("architecture"),
        "model_name": meta.get("model_name"),
        "parameter_count": meta.get("parameter_count"),
        "context_length": meta.get("context_length"),
        "quantization": meta.get("quantization") or tag,
        "file_type": meta.get("file_type"),
        "tensor_count": meta.get("tensor_count"),
        "chat_template": meta.get("chat_template"),
        "created_at": utc_now(),
        "sovcli_version": __version__,
        "llama_cpp_version": llamacpp.version(),
    }
    if conversion is not None:
        manifest["conversion"] = conversion
    return manifest


def dump_manifest(manifest: dict[str, Any]) -> bytes:
    """The canonical bytes of a manifest (sorted keys, 2-space indent, newline)."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def load_manifest(path: Path) -> tuple[dict[str, Any], str]:
    """`(manifest, sha256 of its bytes)`; StoreError when unreadable or not a manifest."""
    try:
        data = Path(path).read_bytes()
        manifest = json.loads(data)
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"cannot read manifest {path}: {exc}",
            hint="Run `sovcli verify`; remove the model with `sovcli rm` and pull it again.",
        ) from exc
    if not isinstance(manifest, dict) or "files" not in manifest or "gguf" not in manifest:
        raise StoreError(f"{path} is not a sovcli manifest")
    return manifest, hashlib.sha256(data).hexdigest()
