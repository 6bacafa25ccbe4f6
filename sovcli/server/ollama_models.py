"""The model descriptions of the Ollama API: `/api/tags`, `/api/show`, `/api/ps` entries.

Facts come from the store's manifest when the model came from the store, from the loaded
engine otherwise, and (for `/api/show`) from the GGUF header. `/api/ps` entries carry a
`sovcli` object with what `sovcli ps` shows beyond Ollama's fields: state, slots busy and
free, the queue, requests in flight, keep-alive and idle time.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli.server.registry import ModelHandle

MAX_INFO_VALUE_CHARS = 256


def iso_time(when: float | None = None) -> str:
    """An RFC 3339 UTC time, as Ollama writes them."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def parameter_size(n_params: Any) -> str:
    """`135M`, `7.2B`: how Ollama shows a parameter count."""
    if not isinstance(n_params, (int, float)) or n_params <= 0:
        return ""
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{n_params / 1e6:.0f}M"


def details(handle: ModelHandle) -> dict[str, Any]:
    """Ollama's `details` object."""
    facts = handle.served.facts or {}
    engine = handle.engine
    family = facts.get("architecture") or (engine.info.architecture if engine else "")
    n_params = facts.get("parameter_count") or (engine.info.n_params if engine else 0)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family or "",
        "families": [family] if family else None,
        "parameter_size": parameter_size(n_params),
        "quantization_level": facts.get("quantization") or "",
    }


def digest_hex(handle: ModelHandle) -> str:
    """The GGUF's sha256 (hex, as Ollama shows digests), or "" when unknown."""
    return (handle.served.digest or "").removeprefix("sha256:")


def file_size(handle: ModelHandle) -> int:
    """Bytes of the model on disk."""
    facts = handle.served.facts or {}
    if isinstance(facts.get("total_size"), int):
        return facts["total_size"]
    try:
        return Path(handle.served.path).stat().st_size
    except OSError:
        return 0


def tag_entry(handle: ModelHandle) -> dict[str, Any]:
    """One model of `/api/tags`."""
    facts = handle.served.facts or {}
    return {
        "name": handle.id,
        "model": handle.id,
        "modified_at": facts.get("created_at") or iso_time(handle.created),
        "size": file_size(handle),
        "digest": digest_hex(handle),
        "details": details(handle),
    }


def ps_entry(handle: ModelHandle, parallel: int) -> dict[str, Any]:
    """One model of `/api/ps`, with sovcli's detail under `sovcli`."""
    now = time.monotonic()
    left = handle.expires_in(now)
    engine = handle.engine
    busy = queued = requests = 0
    slots = parallel
    n_ctx = None
    if engine is not None and not engine.retired:
        stats = engine.inner.stats()
        busy, queued, slots = stats.active_sequences, stats.queued_requests, stats.n_parallel
        requests = stats.requests_total
        n_ctx = engine.info.n_ctx
    return {
        "name": handle.id,
        "model": handle.id,
        "size": handle.memory_bytes,
        "digest": digest_hex(handle),
        "details": details(handle),
        "expires_at": None if left is None else iso_time(time.time() + left),
        "size_vram": 0,
        "context_length": n_ctx,
        "sovcli": {
            "state": handle.state,
            "slots_busy": busy,
            "slots_free": max(slots - busy, 0),
            "queued": queued,
            "in_flight": handle.in_flight,
            "keep_alive_s": handle.keep_alive_s,
            "idle_s": round(now - handle.last_used, 1),
            "expires_in_s": None if left is None else round(left, 1),
            "loaded_at": iso_time(handle.loaded_at) if handle.loaded_at else None,
            "load_s": round(handle.load_s, 3),
            "loads": handle.loads,
            "requests": requests,
            "aliases": list(handle.served.aliases),
        },
    }


def show_body(handle: ModelHandle, meta: dict[str, Any] | None) -> dict[str, Any]:
    """`/api/show`: details, the GGUF's scalar metadata (tokenizer arrays left out), the
    chat template, a Modelfile-like summary and capabilities."""
    scalars = (meta or {}).get("metadata", {}) if meta else {}
    info: dict[str, Any] = {}
    for key, value in scalars.items():
        if key.startswith("tokenizer.") or isinstance(value, (list, dict)):
            continue
        if isinstance(value, str) and len(value) > MAX_INFO_VALUE_CHARS:
            continue
        info[key] = value
    template = scalars.get("tokenizer.chat_template") or ""
    facts = handle.served.facts or {}
    return {
        "modelfile": f"# served by sovcli\nFROM {handle.id}\n",
        "parameters": "",
        "template": template,
        "details": details(handle),
        "model_info": info,
        "capabilities": ["completion", "tools", "embedding"],
        "modified_at": facts.get("created_at") or iso_time(handle.created),
        "license": facts.get("license") or scalars.get("general.license") or "",
    }
