"""Appending to an audit chain: one writer per process and chain, safe with many processes.

Every append takes the chain's lock file (fcntl.flock, so other processes wait) and a thread
lock (threads of one process share the flock), checks whether another process wrote or
rotated since (file identity and size, cheap), reads the last line's hash only then, and
writes the new line whole or not at all (a failed write is cut off again). So a server's
threads, a batch and a CLI run can append at once: never a half line, never a fork.

Rotation (by size and/or by UTC day) renames the active file and starts a new one with an
`audit_anchor` record naming the last record before it; retention deletes rotated files
older than N days (a prefix of the chain only) and records that in an `audit_retention`
record, so the kept files still verify and say where they start.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sovcli.governance.audit_files import (
    ANCHOR_EVENT,
    GENESIS,
    REPAIR_EVENT,
    RETENTION_EVENT,
    ChainFiles,
    canonical_line,
    first_record,
    head_line,
    line_hash,
    read_head,
)

TAIL_CHUNK = 64 * 1024
Build = Callable[[int, str], dict[str, Any]]


def utc_stamp(moment: datetime) -> str:
    """A record's time: ISO 8601 UTC with microseconds and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def os_user() -> str:
    """The OS user running this process (the uid when it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


HOST = socket.gethostname()
USER = os_user()


def last_line(fd: int, size: int) -> tuple[bytes | None, int]:
    """The last whole line of the first `size` bytes of `fd` and the offset where the whole
    lines end (a partial last line, from a writer that died mid-write, lies beyond it)."""
    window = TAIL_CHUNK
    while True:
        start = max(0, size - window)
        data = os.pread(fd, size - start, start)
        end = data.rfind(b"\n")
        if end < 0 and start > 0:
            window *= 2
            continue
        if end < 0:
            return None, 0
        begin = data.rfind(b"\n", 0, end)
        if begin < 0 and start > 0:
            window *= 2
            continue
        return data[begin + 1 : end + 1], start + end + 1


class ChainWriter:
    """Appends records to the chain whose active file is `files.active`."""

    def __init__(
        self,
        files: ChainFiles,
        *,
        rotate_bytes: int = 0,
        daily: bool = False,
        retention_days: int = 0,
        os_write: Callable[[int, Any], int] = os.write,
    ) -> None:
        self.files = files
        self.rotate_bytes = rotate_bytes
        self.daily = daily
        self.retention_days = retention_days
        self.os_write = os_write  # the one low-level write (tests swap it for a full disk)
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fd = self._lock_fd = self._head_fd = -1
        self._identity: tuple[int, int] | None = None  # (inode, size) after our last write
        self._seq, self._hash = 0, GENESIS
        self._day: str | None = None  # UTC day of the active file's first record
        self._pending: list[dict[str, Any]] = []  # repair records to write first

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record this writer knows of."""
        return self._seq, self._hash

    def append(self, fields: dict[str, Any], build: Build | None = None) -> dict[str, Any]:
        """Append one record made of `fields` (plus `build(head_seq, head_hash)`, computed
        under the lock) and return it. OSError when it cannot be written (nothing written)."""
        with self._lock:
            self.open()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._sync()
                now = self.clock()
                while self._pending:
                    self._write(self._pending[0], None, now)
                    self._pending.pop(0)
                if self._rotation_due(now):
                    self._rotate(now)
                return self._write(fields, build, now)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Flush the active file to disk and close every descriptor."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
            self._close_fds()

    # ---- opening and catching up with other writers ------------------------------------
    def open(self) -> None:
        """Open the chain's files (again after a fork); OSError when it cannot."""
        if self._pid == os.getpid() and self._fd >= 0:
            return
        if self._pid != os.getpid():  # a forked child: its parent's descriptors are not its own
            self._fd = self._lock_fd = self._head_fd = -1
        self._close_fds()
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_CLOEXEC
        self._lock_fd = os.open(self.files.lock, flags | os.O_RDWR | os.O_CREAT, 0o600)
        self._head_fd = os.open(self.files.head, flags | os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = self._open_active()
        self._pid, self._identity = os.getpid(), None
        if self.retention_days > 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._sync()
                self._apply_retention(self.clock())
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open_active(self) -> int:
        return os.open(
            self.files.active, os.O_CLOEXEC | os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600
        )

    def _close_fds(self) -> None:
        for fd in (self._fd, self._lock_fd, self._head_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = self._head_fd = -1

    def _sync(self) -> None:
        """Catch up with what other writers did since our last append (under the lock)."""
        try:
            on_disk = os.stat(self.files.active)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self._fd)
        if on_disk is None or (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(self._fd)  # rotated (or removed) by another writer: take the new file
            self._fd = self._open_active()
            mine = os.fstat(self._fd)
        if (mine.st_ino, mine.st_size) != self._identity:
            self._load_tail(mine.st_size)

    def _load_tail(self, size: int) -> None:
        line, whole = last_line(self._fd, size)
        if whole < size:  # a partial last line: cut it off, and say so in the chain
            cut = os.pread(self._fd, size - whole, whole)
            os.ftruncate(self._fd, whole)
            self._pending.append(
                {
                    "event": REPAIR_EVENT,
                    "file": self.files.active.name,
                    "cut_bytes": len(cut),
                    "cut_sha256": hashlib.sha256(cut).hexdigest(),
                }
            )
        if line is not None:
            seq, digest = _seq_of(line), line_hash(line)
            head = read_head(self.files)
            if head is not None and (head[0] > seq or (head[0] == seq and head[1] != digest)):
                # The last records were changed or removed behind the writers' back: link to
                # what was written (the head), so that verify names the change, never hides it.
                seq, digest = head
            self._seq, self._hash = seq, digest
        else:
            self._seq, self._hash = self._head_before_active()
        first = first_record(self.files.active) if whole else None
        stamp = first.get("time") if first else None
        self._day = stamp[:10] if isinstance(stamp, str) else None
        self._identity = (os.fstat(self._fd).st_ino, whole)

    def _head_before_active(self) -> tuple[int, str]:
        """The head when the active file is empty: the last rotated file's last line, else
        the head file, else the start of a new chain."""
        rotated = self.files.rotated()
        if rotated:
            with open(rotated[-1], "rb") as handle:
                line, _ = last_line(handle.fileno(), os.fstat(handle.fileno()).st_size)
            if line is not None:
                return _seq_of(line), line_hash(line)
        return read_head(self.files) or (0, GENESIS)

    # ---- writing -----------------------------------------------------------------------
    def _write(self, fields: dict[str, Any], build: Build | None, now: datetime) -> dict:
        record = dict(fields)
        if build is not None:
            record.update(build(self._seq, self._hash))
        record.setdefault("user", USER)
        record.update(
            seq=self._seq + 1, prev=self._hash, time=utc_stamp(now), pid=os.getpid(), host=HOST
        )
        line = canonical_line(record)
        self._append_line(line)
        self._seq, self._hash = record["seq"], line_hash(line)
        if self._day is None:
            self._day = record["time"][:10]
        with contextlib.suppress(OSError):  # the head only helps verify; never fail for it
            os.pwrite(self._head_fd, head_line(self._seq, self._hash), 0)
        return record

    def _append_line(self, line: bytes) -> None:
        """Write `line` whole, or leave the file as it was and raise OSError."""
        assert self._identity is not None
        inode, start = self._identity
        view = memoryview(line)
        try:
            while view:
                view = view[self.os_write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size > start:
                    os.ftruncate(self._fd, start)
            raise
        self._identity = (inode, start + len(line))

    # ---- rotation and retention --------------------------------------------------------
    def _rotation_due(self, now: datetime) -> bool:
        assert self._identity is not None
        size = self._identity[1]
        if size == 0:
            return False
        if self.rotate_bytes > 0 and size >= self.rotate_bytes:
            return True
        return self.daily and self._day is not None and self._day != now.strftime("%Y-%m-%d")

    def _rotate(self, now: datetime) -> None:
        first = first_record(self.files.active) or {}
        first_seq = first.get("seq") if isinstance(first.get("seq"), int) else self._seq
        day = (self._day or now.strftime("%Y-%m-%d")).replace("-", "")
        target = self.files.rotated_name(first_seq, day)
        if target.exists():  # never overwrite a rotated file
            raise OSError(17, f"{target.name} already exists")
        os.rename(self.files.active, target)
        os.close(self._fd)
        self._fd = self._open_active()
        self._identity, self._day = (os.fstat(self._fd).st_ino, 0), None
        anchor = {
            "event": ANCHOR_EVENT,
            "after_file": target.name,
            "after_seq": self._seq,
            "after_hash": self._hash,
        }
        self._write(anchor, None, now)
        self._apply_retention(now)

    def _apply_retention(self, now: datetime) -> None:
        """Delete rotated files older than the retention (oldest first, stopping at the first
        younger one), then record what went and where the kept chain starts."""
        if self.retention_days <= 0:
            return
        cutoff = now.timestamp() - self.retention_days * 86400
        deleted = []
        for path in self.files.rotated():
            if path.stat().st_mtime >= cutoff:
                break
            path.unlink()
            deleted.append(path.name)
        if not deleted:
            return
        kept = self.files.all_files()
        anchor = first_record(kept[0]) if kept else None
        self._write(
            {
                "event": RETENTION_EVENT,
                "deleted": deleted,
                "retention_days": self.retention_days,
                "kept_from_seq": anchor.get("seq") if anchor else None,
                "through_hash": anchor.get("after_hash") if anchor else None,
            },
            None,
            now,
        )


def _seq_of(line: bytes) -> int:
    """The seq of a record line (0 when it has none: a foreign or damaged line)."""
    try:
        value = json.loads(line).get("seq")
    except (ValueError, AttributeError, RecursionError):
        return 0
    return value if isinstance(value, int) else 0
