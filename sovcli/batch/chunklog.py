"""Work in progress on long documents: one fsynced line per finished chunk answer.

A document split into many chunks takes minutes; its record reaches the results file only
when every chunk (and the combining of their answers) is done. So that a run killed or
interrupted mid-way does not lose that work, each answer of a document that needs more than
one call is appended here as soon as it arrives (one JSON line, fsynced), keyed by the
document's resume key and the sha256 of the exact message sent. The next run of the same job
finds the answers and sends only what is missing; a changed document, prompt, model or
parameter changes the key, so nothing stale is ever reused.

The file sits beside the results file as `.<results name>.chunks` (hidden: a results file
inside the input folder never makes it a document) and is guarded by the results file's
lock. The results file itself keeps exactly one record per document, so line numbers that
`audit replay FILE:LINE` names stay stable. Entries of documents that are finished are
dropped when the file is opened; an empty file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli.batch.backends import Completion
from sovcli.batch.journal import RESUME_HINT, RecordKey, encode_record
from sovcli.errors import StoreError
from sovcli.fsutil import atomic_output, write_error


def chunklog_path(results: Path) -> Path:
    """Where the work in progress of the results file `results` is kept."""
    results = Path(results)
    return results.parent / f".{results.name}.chunks"


def doc_id(key: RecordKey) -> str:
    """A short stable identity of a document's resume key."""
    return hashlib.sha256("\x00".join(key).encode("utf-8", "surrogateescape")).hexdigest()


def step_id(message: str) -> str:
    """The identity of one call: the sha256 of the exact user message sent."""
    return hashlib.sha256(message.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Saved:
    """An answer saved for a document."""

    doc: str
    step: str
    completion: Completion


def _parse(raw: bytes) -> Saved | None:
    try:
        entry = json.loads(raw)
        completion = Completion(
            text=str(entry["text"]),
            prompt_tokens=int(entry["prompt_tokens"]),
            completion_tokens=int(entry["completion_tokens"]),
            finish_reason=str(entry["finish_reason"]),
            seconds=float(entry.get("seconds") or 0.0),
        )
        return Saved(str(entry["doc"]), str(entry["step"]), completion)
    except (ValueError, KeyError, TypeError):
        return None


class ChunkLog:
    """The open work-in-progress file of one run (the caller holds the results file lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._saved: dict[tuple[str, str], Completion] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.written = 0  # answers saved by this run

    @classmethod
    def open(cls, results: Path, keep: set[str] | None = None) -> ChunkLog:
        """Read what earlier runs saved; keep only the documents in `keep` (None: all)."""
        log = cls(chunklog_path(results))
        log._load()
        if keep is not None:
            log._compact(keep)
        return log

    @classmethod
    def read_only(cls, results: Path) -> ChunkLog:
        """What is saved, without opening the file for writing."""
        log = cls(chunklog_path(results))
        log._load()
        return log

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):  # a torn last line: the answer is simply redone
                    break
                saved = _parse(raw)
                if saved is not None:
                    self._saved[(saved.doc, saved.step)] = saved.completion

    def _compact(self, keep: set[str]) -> None:
        """Rewrite the file with the entries of `keep` only (removed when none is left)."""
        kept = {k: v for k, v in self._saved.items() if k[0] in keep}
        if len(kept) == len(self._saved) and (kept or not self.path.exists()):
            self._saved = kept
            return
        self._saved = kept
        if not kept:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        try:
            with atomic_output(self.path, "wb") as (_tmp, out):
                for (doc, step), completion in kept.items():
                    out.write(_line(doc, step, completion))  # type: ignore[attr-defined]
        except StoreError as exc:
            raise type(exc)(exc.message, hint=RESUME_HINT) from exc

    def get(self, doc: str, step: str) -> Completion | None:
        """The answer saved for this call of this document, if any."""
        return self._saved.get((doc, step))

    def count_except(self, finished: set[str]) -> int:
        """How many answers are saved for documents not in `finished`."""
        with self._lock:
            return sum(1 for d, _s in self._saved if d not in finished)

    def save(self, doc: str, step: str, completion: Completion) -> None:
        """Append one answer and fsync it (a StoreError when the disk refuses)."""
        data = _line(doc, step, completion)
        with self._lock:
            if self._closed:  # a late answer after the run ended (Ctrl-C): not kept
                return
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                except OSError as exc:
                    raise write_error(exc, self.path) from exc
            before = os.fstat(self._fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
                error = write_error(exc, self.path)
                raise type(error)(error.message, hint=RESUME_HINT) from exc
            self._saved[(doc, step)] = completion
            self.written += 1

    def close(self, finished: set[str] | None = None) -> None:
        """Close the file; drop it when every document it served is `finished`."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            if finished is not None and all(d in finished for d, _s in self._saved):
                self._saved.clear()
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def _line(doc: str, step: str, completion: Completion) -> bytes:
    entry: dict[str, Any] = {
        "doc": doc,
        "step": step,
        "text": completion.text,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 3),
    }
    return encode_record(entry)
