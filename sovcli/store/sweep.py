"""Clearing what interrupted sovcli processes left behind (SIGKILL, a power cut, a crash).

Every store command starts with `sweep_leftovers()`. Only what no live process holds goes:

- `partial/.staging/<key>@<uuid>` (an install being assembled, a replaced or removed model)
  and `partial/.bundle/<key>@<uuid>` (a bundle being extracted) belong to the process that
  holds the model's lock `locks/<key>.lock`: free lock, dead owner, the folder is removed.
- `partial/<key>/<tag>/` (a pull's downloads) is looked at only while its model's lock is
  free: temp files (`.*.tmp`) go, everything goes once the model is installed, and a
  resumable `.part` (or wheel, checkpoint) untouched for `STALE_DOWNLOAD_SECONDS` goes.
- A temp file (or folder) written outside the store (an export's `.FILE.xxxx.tmp` beside
  its output) is recorded in `partial/.temp/<uuid>` by `tracked_temp_files()`, which holds
  that record's lock while it runs: a free record names temp files whose writer died.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sovcli import paths
from sovcli.errors import InvalidNameError
from sovcli.store.layout import MANIFEST_NAME, lock_path, model_dir, owner_of
from sovcli.store.locks import lock_if_free
from sovcli.store.names import validate_name

WORK_KINDS = (".staging", ".bundle")
TEMP_RECORDS = ".temp"
STALE_DOWNLOAD_SECONDS = 7 * 24 * 3600
"""A resumable download nobody resumed for a week is removed (free model lock only)."""
UNOWNED_SECONDS = 3600
"""A work folder without an owner in its name (older sovcli) is removed after an hour."""


@dataclass
class Swept:
    """What a sweep removed: the paths and how many bytes they held."""

    paths: list[Path] = field(default_factory=list)
    bytes: int = 0

    def remove(self, path: Path) -> None:
        """Delete `path` (a file or a whole folder) and count it; errors leave it be."""
        size = _size(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            return
        self.paths.append(path)
        self.bytes += size


def sweep_leftovers() -> Swept:
    """Remove every leftover of a dead sovcli process from the store (see the module doc)."""
    swept = Swept()
    root = paths.partial_dir()
    if not root.is_dir():
        return swept
    for kind in WORK_KINDS:
        sweep_work_dirs(kind, swept)
    _sweep_temp_records(root / TEMP_RECORDS, swept)
    for key_dir in _entries(root):
        if not key_dir.name.startswith(".") and key_dir.is_dir():
            _sweep_downloads(key_dir, swept)
    return swept


def sweep_work_dirs(kind: str, swept: Swept | None = None) -> Swept:
    """Remove the `partial/<kind>/` folders whose owner's lock is free."""
    swept = swept if swept is not None else Swept()
    for entry in _entries(paths.partial_dir() / kind):
        owner = owner_of(entry.name)
        if owner is None:
            if _age(entry) > UNOWNED_SECONDS:
                swept.remove(entry)
            continue
        with lock_if_free(lock_path(owner)) as free:
            if free:
                swept.remove(entry)
    return swept


def _sweep_downloads(key_dir: Path, swept: Swept) -> None:
    """One model's `partial/<key>/<tag>/` folders, while no pull of that model runs."""
    try:
        name = validate_name(key_dir.name.replace("+", "/"))
    except InvalidNameError:
        return
    with lock_if_free(lock_path(name)) as free:
        if not free:
            return
        for tag_dir in _entries(key_dir):
            if _is_installed(name, tag_dir.name):
                swept.remove(tag_dir)
            elif tag_dir.is_dir():
                _sweep_stale_files(tag_dir, swept)
        _prune(key_dir)


def _is_installed(name: str, tag: str) -> bool:
    try:
        return (model_dir(name, tag) / MANIFEST_NAME).is_file()
    except InvalidNameError:
        return False


def _sweep_stale_files(folder: Path, swept: Swept) -> None:
    """Temp files and folders (never resumable) and files untouched for
    `STALE_DOWNLOAD_SECONDS`; then the folders left empty."""
    for directory, subdirs, files in os.walk(folder):
        here = Path(directory)
        for name in [d for d in subdirs if is_temp_name(d)]:
            swept.remove(here / name)
            subdirs.remove(name)
        for name in files:
            if is_temp_name(name) or _age(here / name) > STALE_DOWNLOAD_SECONDS:
                swept.remove(here / name)
    for directory, _subdirs, _files in os.walk(folder, topdown=False):
        _prune(Path(directory))


def is_temp_name(name: str) -> bool:
    """True for the name of an atomic write's temp file or folder (`.FILE.xxxxxxxx.tmp`)."""
    return name.startswith(".") and name.endswith(".tmp") and len(name) > len("..tmp")


@contextlib.contextmanager
def tracked_temp_files() -> Iterator[Callable[[Path], None]]:
    """Yield `track(path)`: each temp file tracked is removed by a later sweep should this
    process die before it has renamed or removed it (the record is locked until then).

    A store that cannot be written to tracks nothing; the caller's work goes on.
    """
    records = paths.partial_dir() / TEMP_RECORDS
    unique = uuid.uuid4().hex
    pending = records / f".{unique}.new"  # sweeps leave it alone until it is renamed, locked
    record = records / unique
    with contextlib.suppress(OSError):
        records.mkdir(parents=True, exist_ok=True)
    with lock_if_free(pending) as held:
        try:
            if held:
                os.replace(pending, record)  # the lock follows the file
        except OSError:
            held = False

        def track(path: Path) -> None:
            if held:
                with contextlib.suppress(OSError), record.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(str(Path(path).absolute())) + "\n")

        try:
            yield track
        finally:
            for path in (pending, record):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)


def _sweep_temp_records(records: Path, swept: Swept) -> None:
    for record in _entries(records):
        if record.name.startswith("."):
            if _age(record) > UNOWNED_SECONDS:
                swept.remove(record)
            continue
        with lock_if_free(record) as free:
            if not free:
                continue
            for path in _recorded_paths(record):
                if is_temp_name(path.name) and path.exists() and not path.is_symlink():
                    swept.remove(path)
            record.unlink(missing_ok=True)


def _recorded_paths(record: Path) -> list[Path]:
    try:
        lines = record.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, str):
                out.append(Path(value))
    return out


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for directory, _subdirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(directory) / name).lstat().st_size
    return total


def _prune(folder: Path) -> None:
    """Remove `folder` if it is empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()
