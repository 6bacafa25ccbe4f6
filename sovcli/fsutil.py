"""Crash-safe file writes: write to a temp file beside the target, fsync, rename, fsync the dir.

Two shapes:
- `atomic_output(target)` yields `(tmp_path, file)` for code that writes through that file;
  the data is fsynced through the same handle.
- `atomic_path(target)` yields a path for a writer that opens the file itself (GGUFWriter,
  llama.cpp's quantizer); the file is fsynced by path before the rename. The path lies in a
  private hidden directory, so removing that directory on failure also defeats a writer that
  is still running in another thread: it cannot re-create a leftover beside `target`.

Every temp name is `.<target name>.<host>~<pid>~XXXXXXXX.tmp`; on any error (or Ctrl-C, or a
termination signal raised as an exception) the temp file or directory is removed and `target`
is left as it was. Only SIGKILL or a power cut can leave one behind: `atomic_path` sweeps
those of dead processes on this host (see `sweep_stale_temps`) before it writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sovcli.errors import DiskFullError, StoreError


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fsync_file(path)


def fsync_file(path: Path) -> None:
    """Flush a file written through any handle to disk by path (fsync acts on the file, not
    on one descriptor), e.g. after GGUFWriter or llama.cpp closed their own."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(exc: OSError, target: Path) -> StoreError:
    """The StoreError for an OSError met while writing `target` (DiskFullError on ENOSPC)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while writing {target}")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EISDIR or Path(target).is_dir():
        reason = "it is a directory"
    return StoreError(
        f"cannot write {target}: {reason}",
        hint="Choose a path in a folder you can write to.",
    )


def _prepare(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        shown = blocker or target.parent
        raise StoreError(
            f"cannot write {target}: {shown} is a file, not a folder",
            hint="Choose a path in a folder you can write to.",
        ) from exc
    except OSError as exc:
        raise write_error(exc, target) from exc
    if target.is_dir():
        raise StoreError(
            f"cannot write {target}: it is a directory", hint="Give a file name, not a folder."
        )


STALE_AFTER_S = 600.0
"""A temp left by a dead process is swept once nothing in it changed for this long."""


def _owner() -> str:
    """The part of a temp name that says who writes it: `<host>~<pid>~`."""
    return f"{socket.gethostname()}~{os.getpid()}~"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else, or cannot be asked: keep
        return False
    return False


def _last_change(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [child.lstat().st_mtime for child in path.iterdir()]
    return max(times)


def sweep_stale_temps(target: Path) -> list[Path]:
    """Remove the temps a killed writer left beside `target`; return what was removed.

    Only names this module makes count (`.<name>.<host>~<pid>~XXXX.tmp`), and only when the
    host is this one, the process is gone and nothing in it changed for STALE_AFTER_S: a
    writer on another machine sharing the folder, or one still running, is never touched.
    """
    target = Path(target)
    prefix, host = f".{target.name}.", socket.gethostname()
    removed: list[Path] = []
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in candidates:
        tag = path.name[len(prefix) :]
        parts = tag[: -len(".tmp")].split("~") if tag.endswith(".tmp") else []
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            if not _process_gone(int(parts[1])) or time.time() - _last_change(path) < STALE_AFTER_S:
                continue
            if path.is_dir() and not path.is_symlink():
                _remove_tree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _commit(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_output(target: Path, mode: str = "wb") -> Iterator[tuple[Path, object]]:
    """Yield `(tmp_path, file)`; on success the file is fsynced and renamed onto `target`.

    Write through the yielded file (it is the handle that is fsynced). On any error the temp
    file is removed and `target` is left as it was; an OSError becomes a StoreError
    (DiskFullError when the disk is full).
    """
    target = Path(target)
    _prepare(target)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{_owner()}", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise write_error(exc, target) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield tmp, fh
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, target) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path to write `target` through; on success fsync it by path and rename.

    For writers that open the file themselves. The path is `.<name>.<host>~<pid>~XXXX.tmp/
    <name>` beside `target`; the private directory is removed on success and on any error.
    Temps of killed writers are swept first (`sweep_stale_temps`).
    """
    target = Path(target)
    _prepare(target)
    sweep_stale_temps(target)
    try:
        workdir = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.{_owner()}", suffix=".tmp", dir=target.parent)
        )
    except OSError as exc:
        raise write_error(exc, target) from exc
    tmp = workdir / target.name
    try:
        yield tmp
        fsync_file(tmp)
        _commit(tmp, target)
    except OSError as exc:
        _remove_tree(workdir)
        raise write_error(exc, target) from exc
    except BaseException:
        _remove_tree(workdir)
        raise
    _remove_tree(workdir)


def _remove_tree(path: Path) -> None:
    """Remove a private temp directory, retrying once if a writer re-created a file in it."""
    for _attempt in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically and durably."""
    with atomic_output(target, "wb") as (_tmp, fh):
        fh.write(data)  # type: ignore[attr-defined]


def atomic_write_text(target: Path, text: str) -> None:
    """Write UTF-8 `text` to `target` atomically and durably."""
    atomic_write_bytes(target, text.encode("utf-8"))
