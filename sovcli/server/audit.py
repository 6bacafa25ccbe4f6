"""The server's audit log: one chain record per request, appended as each request ends.

The records go into a hash-chained audit trail (sovcli.governance.audit_chain): the site's
trail or the chain whose active file `--audit-log` names, shared safely with other writers
(a batch, a CLI run). Each request record (`event: request`, `command: serve`) holds who
(client address, key id, OS user), what (endpoint, model, model digest, status) and how
much (token counts, latency). Prompt and completion text only when `include_content` is set.

No record is dropped silently:

- every line is plain ASCII-safe JSON: control and separator characters and lone surrogates
  are `\\uXXXX` escapes (lossless: `json.loads` gives the original text back), so no content
  can fail to encode or split a line;
- a line is written whole or not at all (a partial write is cut off again);
- a record that cannot be written (disk full, file size limit, I/O error) is kept in memory,
  up to `backlog_bytes`, and `write` returns False; `ready()` retries the backlog and says
  whether the log is writable again. While it is not, the gate refuses requests with a 503
  (unless the operator chose best effort) and counts them; once the log recovers, a
  `{"event": "audit_gap", ...}` record says how many requests were refused and how many
  records were lost beyond the backlog.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli.errors import SovcliError, UsageError
from sovcli.governance.audit import configure
from sovcli.governance.audit_chain import ChainWriter
from sovcli.governance.audit_files import GAP_EVENT, ChainFiles, canonical_line

BACKLOG_BYTES = 64 * 1024 * 1024


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as a JSON line (UTF-8, newline-terminated), whatever text it holds."""
    return canonical_line(record)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def digest_of(gguf: str) -> str | None:
    """`sha256:<hex>` of a GGUF in the store, from the manifest beside it (None elsewhere)."""
    path = Path(gguf)
    for folder in list(path.parents)[:3]:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        relative = path.relative_to(folder).as_posix()
        for record in manifest.get("files", []) if isinstance(manifest, dict) else []:
            if isinstance(record, dict) and record.get("path") == relative and record.get("sha256"):
                return f"sha256:{record['sha256']}"
        return None
    return None


class AuditLog:
    """The request records of one server, written into an audit chain."""

    def __init__(
        self,
        path: Path,
        *,
        include_content: bool = False,
        backlog_bytes: int = BACKLOG_BYTES,
        models: Iterable[Any] = (),
    ) -> None:
        self.path = path
        self.include_content = include_content
        self.backlog_bytes = backlog_bytes
        self._lock = threading.Lock()
        self._backlog: deque[tuple[dict[str, Any], int]] = deque()
        self._backlog_size = 0
        self._lost = 0  # records dropped because the backlog was full
        self._refused = 0  # requests refused while the log could not be written
        self._failed_since: str | None = None
        self._closed = False
        self.last_error: str | None = None
        self.os_write = os.write  # the one low-level write (tests swap it for a full disk)
        self._digests = self._model_digests(models)
        self._writer = configure(ChainWriter(ChainFiles.at(path)))  # its own lock file handle
        self._writer.os_write = lambda fd, data: self.os_write(fd, data)
        try:
            self._writer.open()
        except OSError as exc:
            raise UsageError(
                f"cannot open the audit log {path}: {exc.strerror}",
                hint="Point --audit-log at a writable file (or SOVCLI_AUDIT_DIR at a folder).",
            ) from exc

    @staticmethod
    def _model_digests(models: Iterable[Any]) -> dict[str, str | None]:
        digests: dict[str, str | None] = {}
        for model in models:
            digest = digest_of(model.path)
            if digest:
                for name in (model.ref, *model.aliases, model.path):
                    digests[name] = digest
        return digests

    @property
    def failing(self) -> bool:
        """Whether records are waiting because the file could not be written."""
        return self._failed_since is not None

    def write(self, record: dict[str, Any], if_unwritten: dict[str, Any] | None = None) -> bool:
        """Append one record. False when it could not be written now: `if_unwritten` (what
        the client got instead, say a 503), or else the record, is then kept in the backlog
        (or counted as lost when the backlog is full)."""
        entry = self._entry(record)
        with self._lock:
            if self._closed:
                return False
            if self._backlog:
                self._flush_locked()
            if not self._backlog and self._append_locked(entry):
                return True
            self._keep_locked(entry if if_unwritten is None else self._entry(if_unwritten))
            return False

    def _entry(self, record: dict[str, Any]) -> dict[str, Any]:
        """The chain record of a request record (its start time kept as `started`)."""
        entry = {k: v for k, v in record.items() if k != "time"}
        if not self.include_content:
            entry = {k: v for k, v in entry.items() if k not in ("prompt", "completion")}
        if "time" in record:
            entry["started"] = record["time"]
        entry.setdefault("event", "request")
        entry.setdefault("command", "serve")
        model = record.get("model")
        digest = self._digest_for(model) if isinstance(model, str) and model else None
        if digest:
            entry["model_digest"] = digest
        return entry

    def _digest_for(self, model: str) -> str | None:
        """The digest of a served model id (cached): from the manifest beside a GGUF path,
        else from the store (never the network); None when it is not known."""
        if model in self._digests:
            return self._digests[model]
        digest = None
        if model.endswith(".gguf"):
            digest = digest_of(model)
        else:
            from sovcli.governance.identity import model_digest
            from sovcli.resolve import find_installed

            try:
                found = find_installed(model)
            except SovcliError:
                found = None
            digest = model_digest(found) if found is not None else None
        if len(self._digests) < 1024:  # ids are served models: few (a bound all the same)
            self._digests[model] = digest
        return digest

    def ready(self) -> bool:
        """Whether the log is writable: retries what is waiting (then notes the gap)."""
        with self._lock:
            if self._closed:
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
            if self._closed:
                return
            self._flush_locked()
            self._closed = True
            self._writer.os_write = os.write
            self._writer.close()

    # ---- under the lock ---------------------------------------------------------------------
    def _append_locked(self, entry: dict[str, Any]) -> bool:
        """Append `entry` to the chain whole, or leave the chain as it was and return False."""
        try:
            self._writer.append(entry)
            return True
        except OSError as exc:
            self.last_error = exc.strerror or str(exc)
            if self._failed_since is None:
                self._failed_since = _now()
            return False

    def _keep_locked(self, entry: dict[str, Any]) -> None:
        if self._failed_since is None:
            self._failed_since = _now()
        size = len(encode_record(entry))
        if self._backlog_size + size > self.backlog_bytes:
            self._lost += 1
            return
        self._backlog.append((entry, size))
        self._backlog_size += size

    def _flush_locked(self) -> bool:
        """Write the backlog, then the gap record; True once nothing waits."""
        while self._backlog:
            entry, size = self._backlog[0]
            if not self._append_locked(entry):
                return False
            self._backlog.popleft()
            self._backlog_size -= size
        if self._failed_since is not None:
            gap = {
                "event": GAP_EVENT,
                "command": "serve",
                "from": self._failed_since,
                "to": _now(),
                "refused_requests": self._refused,
                "lost_records": self._lost,
                "error": self.last_error,
            }
            if not self._append_locked(gap):
                return False
            self._failed_since = None
            self._refused = self._lost = 0
        return True
