"""The provenance manifest written beside every installed model (`manifest.json`)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli import __version__, llamacpp
from sovcli.errors import InvalidNameError, StoreError
from sovcli.store.names import shown, validate_file_name, validate_name, validate_tag

MANIFEST_SCHEMA = 1
MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a few kilobytes; anything past 1 MiB is not read (nor a bundle's marker)."""
_SHA256_HEX = frozenset("0123456789abcdef")
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "source": (dict,),
    "conversion": (dict,),
    "license": (str,),
    "description": (str,),
    "created_at": (str,),
    "gated": (bool,),
}


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


def check_manifest(manifest: Any) -> dict[str, Any]:
    """`manifest` if it has the shape sovcli relies on, else ValueError naming the problem.

    name and tag are store names (InvalidNameError otherwise); files a non-empty list of
    {path, sha256, size} with safe, distinct paths; gguf one of those paths, a .gguf; the
    optional keys of the right JSON type.
    """
    if not isinstance(manifest, dict):
        raise ValueError(f"the manifest is a JSON {type(manifest).__name__}, not an object")
    for key in ("name", "tag", "gguf"):
        if not isinstance(manifest.get(key), str):
            raise ValueError(f"manifest key {key!r} must be a string")
    validate_name(manifest["name"])
    validate_tag(manifest["tag"])
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise ValueError("manifest key 'files' must be a non-empty list")
    seen: set[str] = set()
    for i, record in enumerate(files):
        _check_file_record(i, record)
        if record["path"] in seen:
            raise ValueError(f"manifest lists {shown(record['path'])} twice")
        seen.add(record["path"])
    gguf = manifest["gguf"]
    if gguf not in seen or not gguf.lower().endswith(".gguf"):
        raise ValueError(f"manifest key 'gguf' ({shown(gguf)}) must name one of its .gguf files")
    for key, kinds in _OPTIONAL.items():
        value = manifest.get(key)
        if value is not None and not isinstance(value, kinds):
            raise ValueError(f"manifest key {key!r} must be a {kinds[0].__name__} or null")
    return manifest


def _check_file_record(i: int, record: Any) -> None:
    where = f"manifest files[{i}]"
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object")
    path, sha, size = record.get("path"), record.get("sha256"), record.get("size")
    if not isinstance(path, str):
        raise ValueError(f"{where}.path must be a string")
    try:
        validate_file_name(path)
    except InvalidNameError as exc:
        raise ValueError(f"{where}.path: {exc.message}") from None
    if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _SHA256_HEX:
        raise ValueError(f"{where}.sha256 must be 64 lower-case hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{where}.size must be a non-negative integer")


def load_manifest(path: Path) -> tuple[dict[str, Any], str]:
    """`(manifest, sha256 of its bytes)`; StoreError when unreadable or not a manifest."""
    hint = "Run `sovcli verify`; remove the model with `sovcli rm` and pull it again."
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES:,} bytes")
        manifest = check_manifest(json.loads(data))
    except (OSError, ValueError, InvalidNameError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreError(f"cannot read manifest {path}: {reason}", hint=hint) from exc
    return manifest, hashlib.sha256(data).hexdigest()
