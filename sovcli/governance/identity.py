"""What identifies a model to governance: its digest and the files a signature covers."""

from __future__ import annotations

from typing import Any

from sovcli.store.model import InstalledModel


def model_digest(model: InstalledModel) -> str | None:
    """`sha256:<hex>` of the model's GGUF as its manifest records it (None for a bare path)."""
    gguf = model.manifest.get("gguf")
    for record in model.manifest.get("files", []) or []:
        if isinstance(record, dict) and record.get("path") == gguf and record.get("sha256"):
            return f"sha256:{record['sha256']}"
    return None


def signed_files(manifest: dict[str, Any]) -> list[str]:
    """The model files a signature covers: every file the manifest lists (not manifest.json)."""
    records = manifest.get("files", []) or []
    return sorted(str(r["path"]) for r in records if isinstance(r, dict) and "path" in r)
