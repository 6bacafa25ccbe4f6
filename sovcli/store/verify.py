"""Re-hashing installed models against their manifests (`sovcli verify`, and before `export`).

A model in the store is checked file by file (present, size, sha256). A .gguf used in place
(outside the store) has no manifest to compare with: only its GGUF structure is checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sovcli.errors import IntegrityError
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.hashing import sha256_file
from sovcli.store.layout import MANIFEST_NAME, file_in
from sovcli.store.model import InstalledModel
from sovcli.store.registry import BrokenModel


def verify(model: InstalledModel, progress: Progress | None = None) -> dict[str, Any]:
    """Re-hash every file against the manifest: {model, ok, files: [{path, status, ...}]}.

    status is 'ok', 'missing', 'size' (size differs), 'sha256' (content differs) or
    'invalid-path'. Each hashed file is a progress task in bytes.
    """
    progress = progress or NULL_PROGRESS
    results = [_verify_file(model, record, progress) for record in model.manifest.get("files", [])]
    return {
        "model": model.ref,
        "ok": all(r["status"] == "ok" for r in results),
        "files": results,
    }


def _verify_file(model: InstalledModel, record: dict[str, Any], progress: Progress) -> dict:
    rel = str(record.get("path"))
    entry: dict[str, Any] = {"path": rel, "status": "ok"}
    try:
        path = file_in(model.directory, rel)
    except Exception:
        entry["status"] = "invalid-path"
        return entry
    if not path.is_file():
        entry["status"] = "missing"
        return entry
    size = path.stat().st_size
    if size != int(record.get("size", -1)):
        entry.update(status="size", expected=record.get("size"), actual=size)
        return entry
    task = progress.task(f"verify {rel}", size, unit="B")
    digest = sha256_file(path, task.advance)
    task.close()
    if digest != record.get("sha256"):
        entry.update(status="sha256", expected=record.get("sha256"), actual=digest)
    return entry


def verify_structure(model: InstalledModel) -> dict[str, Any]:
    """A .gguf outside the store: check its GGUF structure (IntegrityError when broken)."""
    from sovcli.store.ggufmeta import read_metadata

    read_metadata([model.gguf_path])
    return {
        "model": str(model.gguf_path),
        "ok": True,
        "manifest": False,
        "files": [{"path": model.gguf_path.name, "status": "ok (structure)"}],
    }


def verify_models(
    models: Iterable[InstalledModel], progress: Progress | None = None
) -> list[dict[str, Any]]:
    """One report per model: hashes for store models, structure for a file used in place."""
    return [verify(m, progress) if m.manifest.get("files") else verify_structure(m) for m in models]


def broken_report(model: BrokenModel) -> dict[str, Any]:
    """The verify report of a model whose manifest is missing or unreadable: a failure."""
    entry = {"path": MANIFEST_NAME, "status": "unreadable", "error": model.reason}
    return {"model": model.ref, "ok": False, "files": [entry]}


def raise_on_failures(reports: list[dict[str, Any]]) -> None:
    """IntegrityError naming every model and file that failed; nothing when all are ok."""
    bad = [r for r in reports if not r["ok"]]
    if not bad:
        return
    detail = "; ".join(
        f"{r['model']}: "
        + ", ".join(f"{f['path']} {f['status']}" for f in r["files"] if f["status"] != "ok")
        for r in bad
    )
    raise IntegrityError(
        f"{len(bad)} model(s) failed verification: {detail}",
        hint="Remove them (`sovcli rm`) and pull again; investigate how the files changed.",
    )
