"""An exclusive, blocking, per-model file lock (flock on POSIX, msvcrt on Windows)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sovcli.errors import StoreError


@contextlib.contextmanager
def model_lock(path: Path, timeout: float = 3600.0) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    A second process pulling the same model waits here until the first is done, then finds
    the model installed. The lock is released by the OS if the holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, timeout)
        try:
            yield
        finally:
            _release(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_if_free(path: Path) -> Iterator[bool]:
    """Take the lock on `path` only if no process holds it now (never waits).

    Yields True while holding it, False when a live process holds it (or it cannot be
    opened). What a dead process held is free: that is how leftovers are told from work
    in progress. Another descriptor of this same process counts as a holder.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            _acquire(fd, path, timeout=0.0)
        except StoreError:
            held = False
        else:
            held = True
        try:
            yield held
        finally:
            if held:
                _release(fd)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"timed out waiting for the lock {path}",
                        hint="Another sovcli is writing this model; wait for it to finish.",
                    ) from None
                time.sleep(0.2)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"timed out waiting for the lock {path}",
                    hint="Another sovcli is writing this model; wait for it to finish.",
                ) from None
            time.sleep(0.1)


def _release(fd: int) -> None:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
    except ImportError:
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
