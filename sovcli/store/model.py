"""`InstalledModel`: a model in the store, as the front ends see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstalledModel:
    """A verified model in the store (or a local .gguf used in place)."""

    name: str  # e.g. "smollm2-135m"
    tag: str  # e.g. "Q4_1"
    directory: Path  # <home>/models/<name>/<tag>; the file's folder for a local path
    gguf_path: Path  # the file to load (first shard for split models)
    manifest: dict[str, Any] = field(default_factory=dict)  # provenance manifest (JSON)
    manifest_sha256: str | None = None  # sha256 of manifest.json as stored

    @property
    def ref(self) -> str:
        """`name:tag`, the canonical way to name it."""
        return f"{self.name}:{self.tag}"
