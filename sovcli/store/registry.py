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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli import paths
from sovcli.errors import (
    DiskFullError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    SovcliError,
    StoreError,
)
from sovcli.fsutil import atomic_write_bytes, fsync_dir, fsync_file
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.hashing import sha256_file
from sovcli.store.layout import MANIFEST_NAME, file_in, lock_path, model_dir, work_dir
from sovcli.store.locks import model_lock
from sovcli.store.manifest import build_manifest, dump_manifest, load_manifest
from sovcli.store.model import InstalledModel
from sovcli.store.names import (
    shard_group,
    shown,
    validate_file_name,
    validate_name,
    validate_tag,
)
from sovcli.store.sweep import sweep_work_dirs


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
    # The catalog's pinned sha256(s) when `name:tag` is a catalog alias: the model must be
    # that one .gguf file (see `pin_problem`); empty when there is no pin to hold it to.
    pinned_sha256: frozenset[str] = frozenset()
    # Files kept beside the model but not in its manifest (a bundle's signature, model.sig):
    # placed in the same atomic rename, never hashed nor listed.
    attachments: list[FileToInstall] = field(default_factory=list)


_BROKEN_HINT = "Remove it with `sovcli rm NAME:TAG` and pull it again."
MAX_NAME_DEPTH = 4  # a model folder: up to three name parts, then the tag


def load_installed(directory: Path) -> InstalledModel:
    """The InstalledModel whose manifest is in `directory`; StoreError when it is unusable."""
    manifest, digest = load_manifest(directory / MANIFEST_NAME)
    try:
        gguf = file_in(directory, manifest["gguf"])
    except InvalidNameError as exc:  # e.g. a symlink planted to point out of the store
        raise StoreError(f"{directory}: {exc.message}", hint=_BROKEN_HINT) from exc
    return InstalledModel(
        name=str(manifest.get("name")),
        tag=str(manifest.get("tag")),
        directory=directory,
        gguf_path=gguf,
        manifest=manifest,
        manifest_sha256=digest,
    )


def get_installed(name: str, tag: str) -> InstalledModel | None:
    """The installed `name:tag`, or None; StoreError when its manifest is unreadable."""
    directory = model_dir(name, tag)
    if not (directory / MANIFEST_NAME).is_file():
        return None
    return load_installed(directory)


def get_intact(name: str, tag: str) -> InstalledModel | None:
    """The installed `name:tag` when its manifest is readable, else None (a pull replaces a
    model whose manifest is broken)."""
    try:
        return get_installed(name, tag)
    except StoreError:
        return None


@dataclass(frozen=True)
class BrokenModel:
    """A directory under `models/` that is not a usable model: its manifest is missing,
    unreadable or malformed. `list` and `verify` report it; `rm name:tag` removes it."""

    name: str
    tag: str
    directory: Path
    reason: str

    @property
    def ref(self) -> str:
        """`name:tag`, as `sovcli rm` takes it."""
        return f"{self.name}:{self.tag}"


def scan_store() -> tuple[list[InstalledModel], list[BrokenModel]]:
    """Every installed model (sorted by name then tag) and every broken model directory.

    A model directory is `models/<1 to 3 name parts>/<tag>/`; one holding files but no
    readable manifest is broken.
    """
    root = paths.models_dir()
    found: list[InstalledModel] = []
    broken: list[BrokenModel] = []
    if not root.is_dir():
        return found, broken
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        parts = here.relative_to(root).parts
        if MANIFEST_NAME not in files and (subdirs or not files):
            continue  # an intermediate folder of a name, or an empty one
        subdirs[:] = []
        if not 2 <= len(parts) <= MAX_NAME_DEPTH:
            continue
        model = _load_or_broken(here, "/".join(parts[:-1]), parts[-1])
        if isinstance(model, BrokenModel):
            broken.append(model)
        else:
            found.append(model)
    return sorted(found, key=lambda m: (m.name, m.tag)), sorted(broken, key=lambda b: b.ref)


def find_broken(name: str, tag: str) -> BrokenModel | None:
    """`name:tag` when its directory exists but its manifest is missing or unreadable."""
    directory = model_dir(name, tag)
    if not directory.is_dir():
        return None
    model = _load_or_broken(directory, name, tag)
    return model if isinstance(model, BrokenModel) else None


def _load_or_broken(directory: Path, name: str, tag: str) -> InstalledModel | BrokenModel:
    if not (directory / MANIFEST_NAME).is_file():
        return BrokenModel(name, tag, directory, f"no {MANIFEST_NAME}")
    try:
        return load_installed(directory)
    except (SovcliError, OSError) as exc:
        reason = exc.message if isinstance(exc, SovcliError) else str(exc)
        return BrokenModel(name, tag, directory, reason)


def list_installed() -> list[InstalledModel]:
    """Every installed model, sorted by name then tag (broken ones: `scan_store`)."""
    return scan_store()[0]


def tags_of(name: str) -> list[InstalledModel]:
    """Installed tags of one name (tags with a broken manifest left out)."""
    validate_name(name)
    base = paths.models_dir() / name
    if not base.is_dir():
        return []
    out = []
    for child in sorted(base.iterdir()):
        if (child / MANIFEST_NAME).is_file():
            with contextlib.suppress(SovcliError, OSError):
                out.append(load_installed(child))
    return out


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
    _check_gguf_choice(spec)
    sweep_work_dirs(STAGING)
    staging = work_dir(STAGING, spec.name)
    staging.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
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
            fsync_file(dest)
            records.append({"path": item.relpath, "sha256": digest, "size": dest.stat().st_size})
        for item in spec.attachments:
            if item.relpath in {r["path"] for r in records}:
                raise IntegrityError(f"{item.relpath} is both a model file and an attachment")
            _place(item, file_in(staging, item.relpath))
        ggufs = [r["path"] for r in records if r["path"].lower().endswith(".gguf")]
        gguf_file = spec.gguf_file or (sorted(ggufs)[0] if ggufs else None)
        if gguf_file is None or gguf_file not in ggufs:
            raise IntegrityError("no .gguf file among the model's files")
        problem = pin_problem(records, gguf_file, spec.pinned_sha256)
        if problem:
            raise IntegrityError(
                f"{spec.name}:{spec.tag} is a catalog model and this is not the catalog's "
                f"file: {problem}",
                hint="Nothing was registered. Import other weights under another name "
                "(`sovcli import FILE --name NAME`).",
            )
        meta = spec.meta
        if meta is None:
            shards = shard_group(gguf_file, set(ggufs))
            meta = read_metadata([file_in(staging, p) for p in shards])
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
        if target.exists():
            old = work_dir(STAGING, spec.name, ".old")
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        _undo(staging, old, target)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while installing {spec.name}:{spec.tag}") from exc
        raise StoreError(f"cannot install {spec.name}:{spec.tag}: {exc}") from exc
    except BaseException:
        _undo(staging, old, target)
        raise
    return load_installed(target)


def _undo(staging: Path, old: Path | None, target: Path) -> None:
    """A failed install leaves the store as it was: the staging folder goes, a model it was
    replacing comes back, no empty folder is left under `models/`."""
    shutil.rmtree(staging, ignore_errors=True)
    if old is not None and old.exists() and not target.exists():
        with contextlib.suppress(OSError):
            os.replace(old, target)
    _prune_empty_parents(target)


STAGING = ".staging"
"""Where installs assemble a model (`partial/.staging/<lock key>@<uuid>`)."""


def pin_problem(records: list[dict[str, Any]], gguf: str, pins: frozenset[str]) -> str | None:
    """Why files `records` (each {path, sha256, ...}) are not the catalog's pinned file, or
    None when they are (or when there is no pin). A pinned model is one .gguf file."""
    if not pins:
        return None
    ggufs = [r for r in records if str(r.get("path", "")).lower().endswith(".gguf")]
    if len(ggufs) != 1 or ggufs[0].get("path") != gguf:
        return f"the catalog pins one .gguf file, not {len(ggufs)}"
    sha = ggufs[0].get("sha256")
    if sha not in pins:
        return f"{gguf} has sha256 {sha}, the catalog pins {' or '.join(sorted(pins))}"
    return None


def _check_gguf_choice(spec: InstallSpec) -> None:
    """The file to load must be one of the model's files, and a .gguf (what `show` reads is
    what `run` loads); checked before anything is written."""
    if spec.gguf_file is None:
        return
    relpaths = {item.relpath for item in spec.files}
    if spec.gguf_file not in relpaths or not spec.gguf_file.lower().endswith(".gguf"):
        raise IntegrityError(
            f"the file to load, {shown(spec.gguf_file)}, is not one of the model's .gguf files",
            hint="Nothing was registered.",
        )


def _prune_empty_parents(target: Path) -> None:
    """Remove `target`'s parent folders under `models/` that are left empty."""
    root = paths.models_dir()
    parent = target.parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def install_locked(spec: InstallSpec, progress: Progress | None = None) -> InstalledModel:
    """`install` under the model's lock."""
    with model_lock(lock_path(spec.name)):
        return install(spec, progress)


def remove(name: str, tag: str) -> Path:
    """Delete an installed model, or a broken one (unreadable manifest); returns its directory."""
    with model_lock(lock_path(name)):
        target = model_dir(name, tag)
        if not target.is_dir():
            raise ModelNotFoundError(
                f"model '{name}:{tag}' is not installed", hint="See `sovcli list`."
            )
        trash = work_dir(STAGING, name, ".rm")
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
        _prune_empty_parents(target)
        return target
