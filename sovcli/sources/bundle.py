"""Air-gap bundles: `sovcli export MODEL -o FILE.tar` and `sovcli pull FILE.tar`.

A bundle is a plain tar: `sovcli-bundle.json` (format marker + the model's manifest) first,
then the model's files. Importing reads only the members the manifest names, refuses any
odd member name, hashes every file against the manifest and registers nothing unless all match.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import IO, Any

from sovcli import paths
from sovcli.errors import IntegrityError, ModelNotFoundError, StoreError
from sovcli.fsutil import atomic_output
from sovcli.progress import NULL_PROGRESS, Progress, ProgressTask
from sovcli.sources.base import ensure_free_space
from sovcli.store.hashing import BLOCK
from sovcli.store.layout import lock_path
from sovcli.store.locks import model_lock
from sovcli.store.model import InstalledModel
from sovcli.store.names import validate_file_name, validate_name, validate_tag
from sovcli.store.registry import FileToInstall, InstallSpec, get_installed, install
from sovcli.store.verify import verify

BUNDLE_MARKER = "sovcli-bundle.json"
BUNDLE_FORMAT = "sovcli-bundle/1"


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
    out = Path(out)
    with (
        atomic_output(out, "wb") as (_tmp, fh),
        tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        info = tarfile.TarInfo(BUNDLE_MARKER)
        info.size = len(header)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(header))
        for record in model.manifest["files"]:
            path = model.directory / record["path"]
            info = tar.gettarinfo(path, arcname=record["path"])
            task = progress.task(f"write {record['path']}", info.size, unit="B")
            with path.open("rb") as src:
                tar.addfile(info, _Counted(src, task))
            task.close()
    return {
        "model": model.ref,
        "bundle": str(out),
        "size": out.stat().st_size,
        "files": [r["path"] for r in model.manifest["files"]],
    }


class _Counted(io.RawIOBase):
    """A file being read, each read reported to a progress task."""

    def __init__(self, raw: IO[bytes], task: ProgressTask) -> None:
        self.raw, self.task = raw, task

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.task.advance(len(data))
        return data


def import_bundle(
    bundle: Path, *, force: bool = False, progress: Progress | None = None
) -> InstalledModel:
    """Verify every file of a bundle against its manifest, then register the model."""
    bundle = Path(bundle).expanduser()
    if not bundle.is_file():
        raise ModelNotFoundError(
            f"no such bundle: {bundle}", hint="Pass the path of a .tar made by `sovcli export`."
        )
    try:
        tar = tarfile.open(bundle, mode="r:*")  # noqa: SIM115 (closed by `with tar` below)
    except (tarfile.TarError, OSError) as exc:
        raise IntegrityError(f"{bundle.name} is not a readable tar bundle: {exc}") from exc
    with tar:
        try:
            marker = tar.getmember(BUNDLE_MARKER)
            header = json.loads(tar.extractfile(marker).read())  # type: ignore[union-attr]
        except (KeyError, ValueError, AttributeError) as exc:
            raise IntegrityError(
                f"{bundle.name} is not a sovcli bundle (no valid {BUNDLE_MARKER})"
            ) from exc
        if header.get("format") != BUNDLE_FORMAT:
            raise IntegrityError(
                f"{bundle.name}: unsupported bundle format {header.get('format')!r}"
            )
        manifest = header.get("manifest") or {}
        name = validate_name(str(manifest.get("name")))
        tag = validate_tag(str(manifest.get("tag")))
        records = manifest.get("files") or []
        if not records:
            raise IntegrityError(f"{bundle.name}: the manifest lists no files")
        with model_lock(lock_path(name)):
            if not force and get_installed(name, tag) is not None:
                existing = get_installed(name, tag)
                assert existing is not None
                return existing
            work = paths.partial_dir() / ".bundle" / uuid.uuid4().hex
            work.mkdir(parents=True, exist_ok=True)
            try:
                ensure_free_space(work, sum(int(r.get("size", 0)) for r in records), bundle.name)
                files = _extract_verified(tar, records, work, progress or NULL_PROGRESS)
                source = {
                    "kind": "bundle",
                    "bundle": str(bundle.resolve()),
                    "original_source": manifest.get("source"),
                    "original_created_at": manifest.get("created_at"),
                    "files": [r["path"] for r in records],
                }
                spec = InstallSpec(
                    name=name,
                    tag=tag,
                    files=files,
                    source=source,
                    gguf_file=str(manifest.get("gguf")),
                    license=manifest.get("license"),
                    gated=manifest.get("gated"),
                    description=manifest.get("description"),
                    conversion=manifest.get("conversion"),
                )
                return install(spec)
            finally:
                shutil.rmtree(work, ignore_errors=True)


def _extract_verified(
    tar: tarfile.TarFile, records: list[dict[str, Any]], work: Path, progress: Progress
) -> list[FileToInstall]:
    return [_extract_one(tar, record, work, progress) for record in records]


def _extract_one(
    tar: tarfile.TarFile, record: dict[str, Any], work: Path, progress: Progress
) -> FileToInstall:
    """Extract one member into `work`, hashing it; IntegrityError unless it matches `record`."""
    rel = validate_file_name(str(record.get("path")))
    try:
        member = tar.getmember(rel)
    except KeyError:
        raise IntegrityError(f"bundle is missing {rel}") from None
    if not member.isfile():
        raise IntegrityError(f"bundle member {rel} is not a regular file")
    src = tar.extractfile(member)
    if src is None:
        raise IntegrityError(f"cannot read {rel} from the bundle")
    target = work / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    task = progress.task(f"verify {rel}", member.size, unit="B")
    try:
        with target.open("wb") as out:
            while block := src.read(BLOCK):
                out.write(block)
                digest.update(block)
                task.advance(len(block))
    except OSError as exc:
        raise StoreError(f"cannot extract {rel}: {exc}") from exc
    task.close()
    sha = digest.hexdigest()
    if sha != record.get("sha256") or target.stat().st_size != record.get("size"):
        raise IntegrityError(
            f"bundle file {rel} does not match its manifest (sha256 {sha}, "
            f"expected {record.get('sha256')})",
            hint="The bundle was corrupted or tampered with; nothing was registered.",
        )
    return FileToInstall(src=target, relpath=rel, sha256=sha, trusted=True)
