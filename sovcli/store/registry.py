"""Installing, listing and removing models in the store (verifying them: `store.verify`).

A model is installed by assembling it in a staging directory under `<home>/partial/`
(files, hashes, manifest), then renaming that directory into `<home>/models/<name>/<tag>`:
readers never see a half-written model. Callers that write hold `model_lock(lock_path(name))`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli import paths
from sovcli.errors import DiskFullError, IntegrityError, ModelNotFoundError, StoreError
from sovcli.fsutil import atomic_write_bytes, fsync_dir
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.hashing import sha256_file
from sovcli.store.layout import MANIFEST_NAME, file_in, lock_path, model_dir
from sovcli.store.locks import model_lock
from sovcli.store.manifest import build_manifest, dump_manifest, load_manifest
from sovcli.store.model import InstalledModel
from sovcli.store.names import validate_file_name, validate_name, validate_tag


@dataclass
class FileToInstall:
    """One file of a model: where it is now, its path inside the model, what it must hash to."""

    src: Path
    relpath: str
    sha256: str | None = None  # expected (verified unless `trusted`)
    trusted: bool = False  # sha256 already verified by the caller: skip re-hashing
    mode: str = "move"  # "move", "copy" or "link" (hardlink, copy when impossible)


@dataclass
class InstallSpec:
    """Everything needed to register a model."""

    name: str
    tag: str
    files: list[FileToInstall]
    source: dict[str, Any]
    gguf_file: str | None = None  # relpath of the file to load (default: first .gguf)
    license: str | None = None
    gated: bool | None = None
    description: str | None = None
    conversion: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None  # precomputed GGUF metadata (skips reading)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the manifest


def load_installed(directory: Path) -> InstalledModel:
    """The InstalledModel whose manifest is in `directory`."""
    manifest, digest = load_manifest(directory / MANIFEST_NAME)
    gguf = file_in(directory, str(manifest["gguf"]))
    return InstalledModel(
        name=str(manifest.get("name")),
        tag=str(manifest.get("tag")),
        directory=directory,
        gguf_path=gguf,
        manifest=manifest,
        manifest_sha256=digest,
    )


def get_installed(name: str, tag: str) -> InstalledModel | None:
    """The installed `name:tag`, or None."""
    directory = model_dir(name, tag)
    if not (directory / MANIFEST_NAME).is_file():
        return None
    return load_installed(directory)


def list_installed() -> list[InstalledModel]:
    """Every installed model, sorted by name then tag (unreadable manifests skipped)."""
    root = paths.models_dir()
    if not root.is_dir():
        return []
    found: list[InstalledModel] = []
    for manifest in root.glob("**/" + MANIFEST_NAME):
        depth = len(manifest.relative_to(root).parts)
        if depth < 3 or depth > 5:
            continue
        with contextlib.suppress(Exception):
            found.append(load_installed(manifest.parent))
    return sorted(found, key=lambda m: (m.name, m.tag))


def tags_of(name: str) -> list[InstalledModel]:
    """Installed tags of one name."""
    validate_name(name)
    base = paths.models_dir() / name
    if not base.is_dir():
        return []
    out = []
    for child in sorted(base.iterdir()):
        if (child / MANIFEST_NAME).is_file():
            with contextlib.suppress(Exception):
                out.append(load_installed(child))
    return out


def _fsync_file(path: Path) -> None:
    """Flush a model file to disk before it is registered (a crash never leaves a torn file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(item: FileToInstall, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if item.mode == "move":
        os.replace(item.src, dest)
        return
    if item.mode == "link":
        try:
            os.link(item.src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(item.src, dest)


STALE_STAGING_SECONDS = 24 * 3600


def _sweep_stale(staging_root: Path) -> None:
    """Remove staging directories left by a crashed install more than a day ago."""
    import time

    if not staging_root.is_dir():
        return
    cutoff = time.time() - STALE_STAGING_SECONDS
    for entry in staging_root.iterdir():
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def _gguf_license(meta: dict[str, Any]) -> str | None:
    value = (meta.get("metadata") or {}).get("general.license")
    return value if isinstance(value, str) else None


def install(spec: InstallSpec, progress: Progress | None = None) -> InstalledModel:
    """Register a model (caller holds the model lock). Verifies hashes and the GGUF first.

    Replaces an existing `name:tag` only once the new one is complete. Files not already
    verified by the caller are hashed, each a `progress` task.
    """
    from sovcli.store.ggufmeta import read_metadata

    validate_name(spec.name)
    validate_tag(spec.tag)
    target = model_dir(spec.name, spec.tag)
    staging_root = paths.partial_dir() / ".staging"
    _sweep_stale(staging_root)
    staging = staging_root / uuid.uuid4().hex
    staging.mkdir(parents=True, exist_ok=True)
    try:
        records = []
        for item in spec.files:
            validate_file_name(item.relpath)
            dest = file_in(staging, item.relpath)
            _place(item, dest)
            if item.trusted and item.sha256:
                digest = item.sha256
            else:
                task = (progress or NULL_PROGRESS).task(f"hash {item.relpath}", dest.stat().st_size)
                digest = sha256_file(dest, task.advance)
                task.close()
                if item.sha256 and digest != item.sha256.lower():
                    raise IntegrityError(
                        f"sha256 mismatch for {item.relpath}: got {digest}, expected {item.sha256}",
                        hint="The file was corrupted or tampered with; it was not registered.",
                    )
            _fsync_file(dest)
            records.append({"path": item.relpath, "sha256": digest, "size": dest.stat().st_size})
        ggufs = [r["path"] for r in records if r["path"].lower().endswith(".gguf")]
        gguf_file = spec.gguf_file or (sorted(ggufs)[0] if ggufs else None)
        if gguf_file is None:
            raise IntegrityError("no .gguf file among the model's files")
        meta = spec.meta
        if meta is None:
            shard_paths = [file_in(staging, p) for p in sorted(ggufs)]
            meta = read_metadata(shard_paths)
        manifest = build_manifest(
            name=spec.name,
            tag=spec.tag,
            files=records,
            gguf_file=gguf_file,
            source=spec.source,
            meta=meta,
            license=spec.license or _gguf_license(meta),
            gated=spec.gated,
            description=spec.description,
            conversion=spec.conversion,
        )
        manifest.update(spec.extra)
        atomic_write_bytes(staging / MANIFEST_NAME, dump_manifest(manifest))
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = staging_root / (uuid.uuid4().hex + ".old")
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while installing {spec.name}:{spec.tag}") from exc
        raise StoreError(f"cannot install {spec.name}:{spec.tag}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_installed(target)


def install_locked(spec: InstallSpec, progress: Progress | None = None) -> InstalledModel:
    """`install` under the model's lock."""
    with model_lock(lock_path(spec.name)):
        return install(spec, progress)


def remove(name: str, tag: str) -> Path:
    """Delete an installed model; returns the directory removed."""
    with model_lock(lock_path(name)):
        target = model_dir(name, tag)
        if not (target / MANIFEST_NAME).is_file():
            raise ModelNotFoundError(
                f"model '{name}:{tag}' is not installed", hint="See `sovcli list`."
            )
        trash = paths.partial_dir() / ".staging" / (uuid.uuid4().hex + ".rm")
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        root = paths.models_dir()
        parent = target.parent
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return target
