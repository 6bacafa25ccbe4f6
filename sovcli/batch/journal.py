"""The results file: one JSON line per document, appended, flushed and fsynced per record.

On open the file is locked (one writer), a torn last line (a run killed mid-write) is cut
off with an fsynced truncate, and every complete record is indexed by its key
(path, input sha256, model identity, prompt hash, parameters hash) so a re-run skips the
documents already done and redoes changed ones. Records that a run is about to replace
(a changed document, a transient failure being retried) are removed first with an atomic
rewrite, so the file never holds two records for one document path.

Records are always valid UTF-8 JSON: text that is not valid Unicode (a lone surrogate from a
server, a file name that is not UTF-8) is escaped as `\\xNN` / `\\uXXXX`. A file name that is
not valid UTF-8 keeps its exact bytes in `path_bytes` (base64) next to the readable `path`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli.errors import StoreError, UsageError
from sovcli.fsutil import atomic_output, fsync_dir, write_error

RecordKey = tuple[str, str, str, str, str]

# Failures worth retrying on a re-run (the model or a server failed, not the document).
RETRYABLE_KINDS = frozenset({"engine", "network", "interrupted"})
RESUME_HINT = "Free some space (or fix the folder), then re-run the same command: it resumes."
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates become `\\xNN` (undecodable bytes) or `\\uXXXX`."""
    return _SURROGATE.sub(_escape_surrogate, text)


def path_fields(rel: str) -> dict[str, str]:
    """A record's `path` (readable), plus `path_bytes` (base64, exact) when it is not UTF-8."""
    shown = safe_text(rel)
    if shown == rel:
        return {"path": rel}
    return {"path": shown, "path_bytes": base64.b64encode(os.fsencode(rel)).decode("ascii")}


def record_path(record: dict[str, Any]) -> str:
    """The exact file name a record is about (as os.walk gives it), for resume keys."""
    raw = record.get("path_bytes")
    if isinstance(raw, str):
        try:
            return os.fsdecode(base64.b64decode(raw, validate=True))
        except (ValueError, binascii.Error):
            pass
    return str(record.get("path", ""))


def clean(value: Any) -> Any:
    """A copy of a JSON-ready value that always encodes as strict, valid UTF-8 JSON."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return safe_text(str(value))


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as one JSON line of valid UTF-8 (never raises for odd text)."""
    text = json.dumps(clean(record), ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def record_key(record: dict[str, Any]) -> RecordKey:
    """The identity of a result: same key means the same work on the same input."""
    model = record.get("model") or {}
    return (
        record_path(record),
        str(record.get("sha256") or ""),
        f"{model.get('ref', '')}@{model.get('manifest_sha256') or model.get('file_sha256') or ''}",
        str(record.get("prompt_sha256", "")),
        str(record.get("params_sha256", "")),
    )


@dataclass(frozen=True)
class IndexedRecord:
    """What resume needs to know about a record already in the file."""

    line_no: int
    status: str
    error_kind: str | None
    key: RecordKey | None = None

    @property
    def retryable(self) -> bool:
        """A failure that a re-run should try again (not a property of the document)."""
        return self.status != "ok" and self.error_kind in RETRYABLE_KINDS


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete, parseable record of a results file, in order (a torn tail is skipped)."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


class Journal:
    """An open, locked results file. Use `Journal.open(path)` and `close()` (or `with`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.index: dict[RecordKey, IndexedRecord] = {}
        self.by_path: dict[str, list[IndexedRecord]] = {}  # every record of a path, in order
        self.repaired_bytes = 0  # bytes cut off a torn last line
        self.skipped_lines = 0  # complete lines that were not valid JSON records (left as is)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._line_count = 0

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Lock, repair and index `path` (created if missing), ready to append."""
        journal = cls(path)
        try:
            journal._open()
        except BaseException:
            journal.close()
            raise
        return journal

    @classmethod
    def read_only(cls, path: Path) -> Journal:
        """The index of `path` without locking, repairing or writing (for --dry-run)."""
        journal = cls(path)
        if journal.path.is_file():
            journal._load_index()
        return journal

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- opening ------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        self._refuse_foreign_file()
        self._repair_tail()
        self._load_index()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return
        lock_path = self.path.parent / f".{self.path.name}.lock"
        try:
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise UsageError(
                f"another sovcli batch is writing {self.path}",
                hint="Wait for it to finish, or write to another file with -o.",
            ) from exc

    def _refuse_foreign_file(self) -> None:
        """Never repair (truncate) a file that is not a results file, e.g. a wrong -o."""
        assert self._fd is not None
        head = os.pread(self._fd, 65536, 0)
        if not head:
            return
        first, newline, _rest = head.partition(b"\n")
        looks_like_ours = first.startswith(b'{"path":') and (not newline or _parses(first))
        if not looks_like_ours:
            raise UsageError(
                f"{self.path} exists and is not a sovcli batch results file",
                hint="Choose another output file with -o; results files are JSON lines.",
            )

    def _repair_tail(self) -> None:
        """Cut a torn last line (no newline, or not JSON) back to the last complete record."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        keep = size
        while keep > 0:
            start, line = self._last_line(keep)
            if line.endswith(b"\n") and _parses(line):
                break
            keep = start  # drop the torn or unparseable last line
        if keep < size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
            self.repaired_bytes = size - keep

    def _last_line(self, end: int) -> tuple[int, bytes]:
        """(offset, bytes) of the last line in the first `end` bytes of the file."""
        assert self._fd is not None
        block = 65536
        pos = end
        tail = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            chunk = os.pread(self._fd, step, pos)
            tail = chunk + tail
            # the line ends at `end`; look for the newline before its content
            body = tail[:-1] if tail.endswith(b"\n") else tail
            cut = body.rfind(b"\n")
            if cut >= 0:
                return pos + cut + 1, tail[cut + 1 :]
        return 0, tail

    def _load_index(self) -> None:
        self.index.clear()
        self.by_path.clear()
        self._line_count = 0
        with open(self.path, "rb") as fh:
            for line_no, raw in enumerate(fh):
                self._line_count = line_no + 1
                if not raw.endswith(b"\n"):  # torn tail (only seen read-only)
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    self.skipped_lines += 1
                    continue
                if not isinstance(record, dict) or "path" not in record:
                    self.skipped_lines += 1
                    continue
                self._remember(record, line_no)

    def _remember(self, record: dict[str, Any], line_no: int) -> None:
        key = record_key(record)
        kind = record.get("error_kind")
        indexed = IndexedRecord(
            line_no=line_no,
            status=str(record.get("status")),
            error_kind=kind if isinstance(kind, str) else None,
            key=key,
        )
        self.index[key] = indexed
        self.by_path.setdefault(key[0], []).append(indexed)

    # --- resume -------------------------------------------------------------------------

    def lookup(self, key: RecordKey) -> IndexedRecord | None:
        """The record already written for `key`, if any."""
        return self.index.get(key)

    def is_done(self, key: RecordKey) -> bool:
        """True when `key` has a record that a re-run should keep (success or input error)."""
        found = self.index.get(key)
        return found is not None and not found.retryable

    def outdated_for(self, key: RecordKey) -> IndexedRecord | None:
        """A record this work replaces: a retryable failure of `key`, or any other record of
        the same path (another input, model, prompt or parameter)."""
        found = self.index.get(key)
        if found is not None:
            return found if found.retryable else None
        records = self.by_path.get(key[0])
        return records[-1] if records else None

    def records_for(self, path: str) -> list[IndexedRecord]:
        """Every record of the document `path` (exact name), in file order."""
        return list(self.by_path.get(path, ()))

    def remove_lines(self, line_numbers: set[int]) -> int:
        """Atomically rewrite the file without those lines; returns how many were removed."""
        if not line_numbers:
            return 0
        assert self._fd is not None
        removed = 0
        try:
            with atomic_output(self.path, "wb") as (_tmp, out), open(self.path, "rb") as src:
                for line_no, raw in enumerate(src):
                    if line_no in line_numbers:
                        removed += 1
                        continue
                    out.write(raw)  # type: ignore[attr-defined]
        except StoreError as exc:  # the file is as it was; say how to carry on
            raise type(exc)(exc.message, hint=RESUME_HINT) from exc
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._load_index()
        return removed

    # --- writing ------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then fsync; a failed write leaves no partial line."""
        if self._fd is None:
            raise StoreError(f"{self.path} is not open")
        data = encode_record(record)
        before: int | None = None
        try:
            before = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            if before is not None:  # no half-written line is left behind
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
            error = write_error(exc, self.path)
            raise type(error)(error.message, hint=RESUME_HINT) from exc
        self._remember(record, self._line_count)
        self._line_count += 1

    @property
    def closed(self) -> bool:
        """True once `close()` ran (late workers of an interrupted run must not write)."""
        return self._fd is None

    def close(self) -> None:
        """Release the file and the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            fsync_dir(self.path.parent)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
