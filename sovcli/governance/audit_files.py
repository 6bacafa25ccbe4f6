"""The files of one audit chain and the format of its lines (no writing, no verifying).

A chain is named by its active file, e.g. `<audit dir>/audit.jsonl`. Beside it:

- rotated files `audit.<first seq, 12 digits>.<YYYYMMDD>.jsonl` (oldest first by seq);
- `audit.jsonl.lock`: the lock every writer holds (fcntl.flock) while it appends;
- `audit.jsonl.head`: `<seq> sha256:<hex>` of the last record written, updated after each
  append, so that deleting or editing the last records is seen too.

A line is one record as canonical JSON (sorted keys, no spaces, UTF-8, control and separator
characters as `\\uXXXX` escapes so no text can split a line), newline-terminated. Its hash is
the sha256 of its bytes without the newline; each record's `prev` is the hash of the line
before it (across files), the first record's `prev` is GENESIS.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "sha256:" + "0" * 64
ACTIVE_NAME = "audit.jsonl"
ANCHOR_EVENT = "audit_anchor"
SEAL_EVENT = "audit_seal"
RETENTION_EVENT = "audit_retention"
REPAIR_EVENT = "audit_repair"
GAP_EVENT = "audit_gap"
ROTATED_NAME = re.compile(r"^(.+)\.(\d{12,})\.(\d{8})\.jsonl$")
# What json.dumps(ensure_ascii=False) leaves raw but a log line must not hold: DEL and C1
# controls, line/paragraph separators, bidi controls and lone surrogates.
_RAW = re.compile("[\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _u_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return repr(value)[:4096]


def canonical_line(record: dict[str, Any]) -> bytes:
    """One record as its canonical JSON line (UTF-8, newline-terminated), whatever it holds."""
    try:
        text = json.dumps(
            record, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str
        )
    except (ValueError, TypeError, RecursionError):  # unserialisable or absurdly deep content
        safe = {str(k): _scalar(v) for k, v in record.items()}
        text = json.dumps(safe, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return (_RAW.sub(_u_escape, text) + "\n").encode("utf-8")


def line_hash(line: bytes) -> str:
    """`sha256:<hex>` of a line (its trailing newline excluded)."""
    return "sha256:" + hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(frozen=True)
class ChainFiles:
    """Where the files of the chain whose active file is `active` live."""

    active: Path

    @classmethod
    def at(cls, path: Path) -> ChainFiles:
        """The chain at `path`: a directory (its `audit.jsonl`) or an active file."""
        if path.is_dir():
            return cls(path / ACTIVE_NAME)
        return cls(path)

    @property
    def directory(self) -> Path:
        """The folder of the chain."""
        return self.active.parent

    @property
    def lock(self) -> Path:
        """The lock file writers hold."""
        return self.active.with_name(self.active.name + ".lock")

    @property
    def head(self) -> Path:
        """The head file (`<seq> <hash>` of the last record)."""
        return self.active.with_name(self.active.name + ".head")

    @property
    def _stem(self) -> str:
        name = self.active.name
        return name[: -len(".jsonl")] if name.endswith(".jsonl") else name

    def rotated_name(self, first_seq: int, day: str) -> Path:
        """The name a full active file gets when it is rotated."""
        return self.active.with_name(f"{self._stem}.{first_seq:012d}.{day}.jsonl")

    def rotated(self) -> list[Path]:
        """The rotated files, oldest first (by the seq of their first record)."""
        pattern = re.compile(rf"^{re.escape(self._stem)}\.(\d{{12,}})\.(\d{{8}})\.jsonl$")
        found = []
        if self.directory.is_dir():
            for entry in self.directory.iterdir():
                match = pattern.match(entry.name)
                if match and entry.is_file():
                    found.append((int(match.group(1)), entry))
        return [path for _, path in sorted(found)]

    def all_files(self) -> list[Path]:
        """Every file of the chain in order: the rotated ones, then the active one."""
        files = self.rotated()
        if self.active.is_file():
            files.append(self.active)
        return files


def read_head(files: ChainFiles) -> tuple[int, str] | None:
    """The (seq, hash) the head file holds, or None when it is absent or unreadable."""
    try:
        text = files.head.read_text(encoding="ascii").split()
        seq, digest = int(text[0]), text[1]
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return (seq, digest) if digest.startswith("sha256:") else None


def head_line(seq: int, digest: str) -> bytes:
    """The head file's content (fixed length, so it is rewritten in place)."""
    return f"{seq:020d} {digest}\n".encode("ascii")


def first_record(path: Path, limit: int = 1 << 20) -> dict[str, Any] | None:
    """The first record of a file (None when it has no whole first line)."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline(limit)
    except OSError:
        return None
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
