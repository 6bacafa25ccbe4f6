"""Air-gap bundles: `sovcli export MODEL -o FILE.tar` and `sovcli pull FILE.tar`.

A bundle is a plain tar: `sovcli-bundle.json` (format marker + the model's manifest) first,
then the model's files. Importing treats the bundle as hostile: the marker is read only if
it is small, and only when it is the first member; the manifest is checked for shape and
types; a catalog alias must hold the catalog's pinned file; each member named by the
manifest is extracted only if its size is the manifest's, its bytes counted while they are
written (never more than the manifest says) and hashed; nothing is registered unless all
match, and the work folder is removed whatever happens.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sovcli.errors import (
    DiskFullError,
    IntegrityError,
    ModelNotFoundError,
    SignatureError,
    StoreError,
)
from sovcli.fsutil import atomic_output
from sovcli.governance.identity import signed_files
from sovcli.governance.oms import MAX_SIGNATURE_BYTES
from sovcli.governance.signing import SIGNATURE_FILE, TrustAnchors, verify_model
from sovcli.progress import NULL_PROGRESS, Progress, ProgressTask
from sovcli.sources.base import ensure_free_space, is_disk_full, one_line
from sovcli.sources.catalog import load_catalog
from sovcli.store.hashing import BLOCK
from sovcli.store.layout import lock_path, work_dir
from sovcli.store.locks import model_lock
from sovcli.store.manifest import MAX_MANIFEST_BYTES, check_manifest
from sovcli.store.model import InstalledModel
from sovcli.store.names import shown
from sovcli.store.registry import FileToInstall, InstallSpec, get_intact, install, pin_problem
from sovcli.store.sweep import tracked_temp_files
from sovcli.store.verify import verify

BUNDLE_MARKER = "sovcli-bundle.json"
BUNDLE_FORMAT = "sovcli-bundle/1"
MAX_MARKER_BYTES = MAX_MANIFEST_BYTES
"""The marker is read only when its tar header says it is at most this large."""
BUNDLE_WORK = ".bundle"
# What reading a truncated or corrupt (possibly compressed) tar raises.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)


def export_bundle(
    model: InstalledModel, out: Path, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Write `model` (verified first) to the tar `out`; returns a summary."""
    progress = progress or NULL_PROGRESS
    report = verify(model, progress)
    if not report["ok"]:
        bad = ", ".join(
            f"{f['path']} ({f['status']})" for f in report["files"] if f["status"] != "ok"
        )
        raise IntegrityError(
            f"{model.ref} fails verification ({bad}); not exporting it",
            hint="Pull the model again, then export.",
        )
    header = json.dumps({"format": BUNDLE_FORMAT, "manifest": model.manifest}, indent=2).encode()
    if len(header) > MAX_MARKER_BYTES:
        raise IntegrityError(f"{model.ref}: its manifest is too large for a bundle")
    out = Path(out)
    with (
        tracked_temp_files() as track,  # a killed export's temp file goes at the next sweep
        atomic_output(out, "wb") as (tmp, fh),
        tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        track(tmp)
        info = tarfile.TarInfo(BUNDLE_MARKER)
        info.size = len(header)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(header))
        for record in model.manifest["files"]:
            path = model.directory / record["path"]
            info = tar.gettarinfo(path, arcname=record["path"])
            info.uid = info.gid = 0
            info.uname = info.gname = ""  # no local account names in a bundle
            task = progress.task(f"write {record['path']}", info.size, unit="B")
            with path.open("rb") as src:
                tar.addfile(info, _Counted(src, task))
            task.close()
        signed = _add_signature(tar, model)
    return {
        "model": model.ref,
        "bundle": str(out),
        "size": out.stat().st_size,
        "files": [r["path"] for r in model.manifest["files"]],
        "signature": signed,
    }


def _add_signature(tar: tarfile.TarFile, model: InstalledModel) -> bool:
    """Add the model's OMS signature (model.sig) to the bundle, when it has one."""
    signature = model.directory / SIGNATURE_FILE
    if not signature.is_file() or SIGNATURE_FILE in signed_files(model.manifest):
        return False
    data = signature.read_bytes()
    info = tarfile.TarInfo(SIGNATURE_FILE)
    info.size, info.mtime, info.mode = len(data), int(signature.stat().st_mtime), 0o644
    tar.addfile(info, io.BytesIO(data))
    return True


class _Counted(io.RawIOBase):
    """A file being read, each read reported to a progress task."""

    def __init__(self, raw: IO[bytes], task: ProgressTask) -> None:
        self.raw, self.task = raw, task

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.task.advance(len(data))
        return data


@dataclass(frozen=True)
class BundleImport:
    """What importing a bundle did: the model, and whether it was already installed."""

    model: InstalledModel
    already_installed: bool


def import_bundle(
    bundle: Path, *, force: bool = False, action: str = "pull", progress: Progress | None = None
) -> BundleImport:
    """Verify every file of a bundle against its manifest, then register the model.

    An installed `name:tag` is kept as is unless `force`. IntegrityError for a bundle that
    is truncated, corrupt, malformed, larger than it says, or not the catalog's file for a
    catalog alias; InvalidNameError for a name or tag that could escape the store. A
    signature (model.sig) in the bundle is kept beside the model; one that does not match
    the files is a SignatureError. The site policy (`enforce_files`, for `action`) sees the
    extracted files before anything is registered.
    """
    bundle = Path(bundle).expanduser()
    if not bundle.is_file():
        raise ModelNotFoundError(
            f"no such bundle: {bundle}", hint="Pass the path of a .tar made by `sovcli export`."
        )
    label = bundle.name if bundle.name.isprintable() else shown(bundle.name)
    try:
        tar = tarfile.open(bundle, mode="r:*")  # noqa: SIM115 (closed by `with tar` below)
    except _READ_ERRORS as exc:
        raise IntegrityError(
            f"{label} is not a readable tar bundle (empty, truncated or not a tar file)",
            hint="Pass a .tar made by `sovcli export`; copy it again if it was cut short.",
        ) from exc
    with tar:
        manifest = _read_marker(tar, label)
        name, tag = manifest["name"], manifest["tag"]
        pins = load_catalog().pinned_sha256(name, tag)
        problem = pin_problem(manifest["files"], manifest["gguf"], pins)
        if problem:
            raise _not_the_catalog_file(f"{name}:{tag}", problem)
        with model_lock(lock_path(name)):
            existing = None if force else get_intact(name, tag)
            if existing is not None:
                return BundleImport(existing, already_installed=True)
            spec = _spec(bundle, manifest, pins)
            work = work_dir(BUNDLE_WORK, name)
            try:
                work.mkdir(parents=True)
                ensure_free_space(work, manifest["total_size"], label)
                spec.files = [
                    _extract_one(tar, label, record, work, progress or NULL_PROGRESS)
                    for record in manifest["files"]
                ]
                spec.attachments = _check_signature(
                    tar, label, work, manifest, action, progress or NULL_PROGRESS
                )
                return BundleImport(install(spec, progress), already_installed=False)
            finally:
                shutil.rmtree(work, ignore_errors=True)


def _check_signature(
    tar: tarfile.TarFile,
    bundle_name: str,
    work: Path,
    manifest: dict[str, Any],
    action: str,
    progress: Progress,
) -> list[FileToInstall]:
    """Extract the bundle's signature beside its verified files in `work`, refuse it when it
    does not match them, and let the site policy judge the files; returns what to keep."""
    from sovcli.governance.policy import enforce_files

    kept = []
    if SIGNATURE_FILE not in signed_files(manifest):
        signature = _extract_signature(tar, bundle_name, work)
        if signature is not None:
            kept.append(FileToInstall(src=signature, relpath=SIGNATURE_FILE, trusted=True))
    digests = {r["path"]: r["sha256"] for r in manifest["files"]}  # just checked
    status = verify_model(work, signed_files(manifest), TrustAnchors(), digests=digests)
    if status.state == "invalid":
        raise SignatureError(
            f"{bundle_name}: its signature does not match the model: {status.detail}",
            hint="The bundle was altered in transit or its signature swapped; nothing was "
            "registered. Get the bundle again from its signer.",
        )
    enforce_files(work, manifest, action)
    if kept:
        progress.note(f"signature by {status.signer} matches the files; kept beside the model")
    return kept


def _extract_signature(tar: tarfile.TarFile, bundle_name: str, work: Path) -> Path | None:
    """`work/model.sig` from the bundle (at most MAX_SIGNATURE_BYTES), or None without one."""
    try:
        member = tar.getmember(SIGNATURE_FILE)
        src = tar.extractfile(member) if member.isfile() else None
    except KeyError:
        return None
    except _READ_ERRORS as exc:
        raise _truncated(bundle_name, exc) from exc
    if src is None or member.size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{bundle_name}: its {SIGNATURE_FILE} is not a regular file of at most "
            f"{MAX_SIGNATURE_BYTES:,} bytes",
            hint="The bundle was damaged or altered; nothing was registered.",
        )
    target = work / SIGNATURE_FILE
    try:
        _copy_counted(src, target, SIGNATURE_FILE, member.size, hashlib.sha256(), ProgressTask())
    except _Unreadable as exc:
        raise _truncated(bundle_name, exc.__cause__ or exc) from exc
    return target


def _read_marker(tar: tarfile.TarFile, bundle_name: str) -> dict[str, Any]:
    """The manifest in the bundle's first member, checked for shape and types."""
    not_a_bundle = f"{bundle_name} is not a sovcli bundle"
    try:
        first = tar.next()
        if first is None or first.name != BUNDLE_MARKER or not first.isfile():
            raise IntegrityError(f"{not_a_bundle} ({BUNDLE_MARKER} is not its first member)")
        if first.size > MAX_MARKER_BYTES:
            raise IntegrityError(
                f"{not_a_bundle}: its {BUNDLE_MARKER} is {first.size:,} bytes "
                f"(at most {MAX_MARKER_BYTES:,})"
            )
        stream = tar.extractfile(first)
        data = stream.read(MAX_MARKER_BYTES + 1) if stream is not None else b""
    except _READ_ERRORS as exc:
        raise _truncated(bundle_name, exc) from exc
    try:
        header = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{not_a_bundle} ({BUNDLE_MARKER} is not valid JSON)") from exc
    if not isinstance(header, dict):
        raise IntegrityError(f"{not_a_bundle} ({BUNDLE_MARKER} is not a JSON object)")
    if header.get("format") != BUNDLE_FORMAT:
        found = shown(header.get("format"))
        raise IntegrityError(f"{bundle_name}: unsupported bundle format {found}")
    try:
        manifest = check_manifest(header.get("manifest"))
    except ValueError as exc:
        raise IntegrityError(
            f"{bundle_name}: malformed manifest: {exc}",
            hint="The bundle was damaged or not made by `sovcli export`; nothing was registered.",
        ) from exc
    manifest["total_size"] = sum(r["size"] for r in manifest["files"])
    return manifest


def _not_the_catalog_file(ref: str, problem: str) -> IntegrityError:
    return IntegrityError(
        f"{ref} is a catalog model, and this bundle does not hold the catalog's file: {problem}",
        hint="Nothing was registered. Export the model from a store that pulled it from its "
        "catalog source, or import other weights under another name.",
    )


def _spec(bundle: Path, manifest: dict[str, Any], pins: frozenset[str]) -> InstallSpec:
    """What to register (its files are filled in once extracted and verified)."""
    source = {
        "kind": "bundle",
        "bundle": str(bundle.resolve()),
        "original_source": manifest.get("source"),
        "original_created_at": manifest.get("created_at"),
        "files": [r["path"] for r in manifest["files"]],
    }
    return InstallSpec(
        name=manifest["name"],
        tag=manifest["tag"],
        files=[],
        source=source,
        gguf_file=manifest["gguf"],
        license=manifest.get("license"),
        gated=manifest.get("gated"),
        description=manifest.get("description"),
        conversion=manifest.get("conversion"),
        pinned_sha256=pins,
    )


def _extract_one(
    tar: tarfile.TarFile, bundle_name: str, record: dict[str, Any], work: Path, progress: Progress
) -> FileToInstall:
    """Extract one member into `work`, hashing it; IntegrityError unless it matches `record`.

    The member's size must be the manifest's before a byte is written, and the bytes are
    counted as they are written: a member that would inflate past it is refused at once.
    """
    rel, size = record["path"], record["size"]
    try:
        member = tar.getmember(rel)
        src = tar.extractfile(member) if member.isfile() else None
    except KeyError:
        raise IntegrityError(f"{bundle_name} is missing {rel}") from None
    except _READ_ERRORS as exc:
        raise _truncated(bundle_name, exc) from exc
    if src is None:
        raise IntegrityError(f"bundle member {rel} is not a regular file")
    if member.size != size:
        raise _size_mismatch(rel, member.size, size)
    target = work / rel
    digest = hashlib.sha256()
    task = progress.task(f"verify {rel}", size, unit="B")
    try:
        written = _copy_counted(src, target, rel, size, digest, task)
    except _Unreadable as exc:
        raise _truncated(bundle_name, exc.__cause__ or exc) from exc
    task.close()
    sha = digest.hexdigest()
    if written != size or sha != record["sha256"]:
        raise IntegrityError(
            f"bundle file {rel} does not match its manifest (sha256 {sha}, "
            f"expected {record['sha256']})",
            hint="The bundle was corrupted or tampered with; nothing was registered.",
        )
    return FileToInstall(src=target, relpath=rel, sha256=sha, trusted=True)


def _copy_counted(
    src: IO[bytes], target: Path, rel: str, limit: int, digest: Any, task: ProgressTask
) -> int:
    """Copy member `rel` to `target`, hashing; IntegrityError as soon as it passes `limit`."""
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while True:
                try:
                    block = src.read(min(BLOCK, limit - written + 1))
                except _READ_ERRORS as exc:
                    raise _Unreadable() from exc
                if not block:
                    return written
                written += len(block)
                if written > limit:
                    raise _size_mismatch(rel, None, limit)
                out.write(block)
                digest.update(block)
                task.advance(len(block))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"disk full while extracting {rel}") from exc
        raise StoreError(f"cannot extract {rel}: {exc.strerror or exc}") from exc


class _Unreadable(Exception):
    """Reading the bundle failed (its cause says why), as opposed to writing the copy."""


def _truncated(bundle_name: str, exc: BaseException) -> IntegrityError:
    return IntegrityError(
        f"{bundle_name} is truncated or corrupt ({one_line(exc)})",
        hint="Copy the bundle again (compare its size or sha256 with the original); "
        "nothing was registered.",
    )


def _size_mismatch(rel: str, actual: int | None, expected: int) -> IntegrityError:
    """`actual` None: the member was found larger than `expected` while being copied."""
    if actual is None:
        what = f"bundle member {rel} is larger than its manifest says ({expected:,} bytes)"
    else:
        what = f"bundle member {rel} is {actual:,} bytes but its manifest says {expected:,}"
    return IntegrityError(
        what, hint="The bundle was corrupted or tampered with; nothing was registered."
    )
