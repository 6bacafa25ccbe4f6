"""The audit log: one JSON line per request, appended and flushed as each request ends.

Records hold who (client address, key id), what (endpoint, model, status) and how much
(token counts, latency). Prompt and completion text only when `include_content` is set.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from sovcli.errors import UsageError


class AuditLog:
    """An append-only JSONL file, readable by its owner only when created here."""

    def __init__(self, path: Path, *, include_content: bool = False) -> None:
        self.path = path
        self.include_content = include_content
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot open the audit log {path}: {exc.strerror}",
                hint="Point --audit-log at a writable file.",
            ) from exc
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line and flush it to the OS."""
        if not self.include_content:
            record = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
