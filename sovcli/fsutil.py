"""Crash-safe file writes: write to a temp file beside the target, fsync, rename, fsync the dir."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sovcli.errors import DiskFullError, StoreError


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(target: Path, mode: str = "wb") -> Iterator[tuple[Path, object]]:
    """Yield `(tmp_path, file)`; on success the temp file is fsynced and renamed onto `target`.

    On any error the temp file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield tmp, fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while writing {target}") from exc
        raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically and durably."""
    with atomic_output(target, "wb") as (_tmp, fh):
        fh.write(data)  # type: ignore[attr-defined]


def atomic_write_text(target: Path, text: str) -> None:
    """Write UTF-8 `text` to `target` atomically and durably."""
    atomic_write_bytes(target, text.encode("utf-8"))
