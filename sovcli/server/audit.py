"""The audit log: one JSON line per request, appended and flushed as each request ends.

Records hold who (client address, key id), what (endpoint, model, status) and how much
(token counts, latency). Prompt and completion text only when `include_content` is set.

No record is dropped silently:

- every line is plain ASCII-safe JSON: control and separator characters and lone surrogates
  are `\\uXXXX` escapes (lossless: `json.loads` gives the original text back), so no content
  can fail to encode or split a line;
- a line is written whole or not at all (a partial write is cut off again);
- a line that cannot be written (disk full, file size limit, I/O error) is kept in memory,
  up to `backlog_bytes`, and `write` returns False; `ready()` retries the backlog and says
  whether the log is writable again. While it is not, the gate refuses requests with a 503
  (unless the operator chose best effort) and counts them; once the log recovers, a
  `{"event": "audit_gap", ...}` record says how many requests were refused and how many
  records were lost beyond the backlog.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli.errors import UsageError

BACKLOG_BYTES = 64 * 1024 * 1024
# What json.dumps(ensure_ascii=False) leaves raw but a log line must not hold: DEL and C1
# controls, line/paragraph separators, bidi controls and lone surrogates.
_RAW = re.compile("[\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _u_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as a JSON line (UTF-8, newline-terminated), whatever text it holds."""
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):  # unserialisable or absurdly deep content
        safe = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)[:4096])
                for k, v in record.items()}  # fmt: skip
        text = json.dumps(safe, ensure_ascii=False, separators=(",", ":"))
    return (_RAW.sub(_u_escape, text) + "\n").encode("utf-8")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class AuditLog:
    """An append-only JSONL file, readable by its owner only when created here."""

    def __init__(
        self, path: Path, *, include_content: bool = False, backlog_bytes: int = BACKLOG_BYTES
    ) -> None:
        self.path = path
        self.include_content = include_content
        self.backlog_bytes = backlog_bytes
        self._lock = threading.Lock()
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0
        self._lost = 0  # records dropped because the backlog was full
        self._refused = 0  # requests refused while the log could not be written
        self._failed_since: str | None = None
        self.last_error: str | None = None
        self.os_write = os.write  # the one low-level write (tests swap it for a full disk)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot open the audit log {path}: {exc.strerror}",
                hint="Point --audit-log at a writable file.",
            ) from exc

    @property
    def failing(self) -> bool:
        """Whether records are waiting because the file could not be written."""
        return self._failed_since is not None

    def write(self, record: dict[str, Any], if_unwritten: dict[str, Any] | None = None) -> bool:
        """Append one record. False when it could not be written now: `if_unwritten` (what
        the client got instead, say a 503), or else the record, is then kept in the backlog
        (or counted as lost when the backlog is full)."""
        line = self._encode(record)
        with self._lock:
            if self._fd is None:
                return False
            if self._backlog:
                self._flush_locked()
            if not self._backlog and self._append_locked(line):
                return True
            self._keep_locked(line if if_unwritten is None else self._encode(if_unwritten))
            return False

    def _encode(self, record: dict[str, Any]) -> bytes:
        if not self.include_content:
            record = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        return encode_record(record)

    def ready(self) -> bool:
        """Whether the log is writable: retries what is waiting (then notes the gap)."""
        with self._lock:
            if self._fd is None:
                return False
            if self._failed_since is None:
                return True
            return self._flush_locked()

    def note_refused(self) -> None:
        """Count a request refused because the log could not be written."""
        with self._lock:
            self._refused += 1

    def close(self) -> None:
        """Write what waits if possible, flush to disk and close."""
        with self._lock:
            if self._fd is None:
                return
            self._flush_locked()
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # ---- under the lock ---------------------------------------------------------------------
    def _append_locked(self, line: bytes) -> bool:
        """Write `line` whole, or leave the file as it was and return False."""
        assert self._fd is not None
        start = None
        view = memoryview(line)
        try:
            while view:
                written = self.os_write(self._fd, view)
                if start is None:
                    start = os.lseek(self._fd, 0, os.SEEK_CUR) - written
                view = view[written:]
            return True
        except OSError as exc:
            self.last_error = exc.strerror or str(exc)
            if start is not None:  # a part went out: cut it off again, the line stays whole
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            if self._failed_since is None:
                self._failed_since = _now()
            return False

    def _keep_locked(self, line: bytes) -> None:
        if self._failed_since is None:
            self._failed_since = _now()
        if self._backlog_size + len(line) > self.backlog_bytes:
            self._lost += 1
            return
        self._backlog.append(line)
        self._backlog_size += len(line)

    def _flush_locked(self) -> bool:
        """Write the backlog, then the gap record; True once nothing waits."""
        while self._backlog:
            if not self._append_locked(self._backlog[0]):
                return False
            self._backlog_size -= len(self._backlog.popleft())
        if self._failed_since is not None:
            gap = {
                "event": "audit_gap",
                "from": self._failed_since,
                "to": _now(),
                "refused_requests": self._refused,
                "lost_records": self._lost,
                "error": self.last_error,
            }
            if not self._append_locked(encode_record(gap)):
                return False
            self._failed_since = None
            self._refused = self._lost = 0
        return True
