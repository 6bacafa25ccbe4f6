"""Verifying an audit chain: every edited, deleted, inserted or reordered record, named.

The walk recomputes each line's hash and follows `prev` links in file order (across the
rotated files, then the active one). Each problem names the file and line:

- edited: a record whose hash is not the `prev` of the record after it, or whose own fields
  contradict its link (seq, anchor, seal);
- deleted: a gap in seq where the link is missing too (also: records missing at the start
  without an anchor, or at the end according to the head file);
- inserted: a line that links to nothing, a copy of another line, or one of two records
  claiming the same place when nothing follows it;
- reordered: a genuine record that comes before the record it follows;
- truncated: a last line without its newline; malformed: a line that is not a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.governance.audit_files import (
    ANCHOR_EVENT,
    GENESIS,
    REPAIR_EVENT,
    RETENTION_EVENT,
    ROTATED_NAME,
    SEAL_EVENT,
    ChainFiles,
    line_hash,
    read_head,
)
from sovcli.governance.audit_seal import check_seal


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the chain, at `file`:`line`."""

    file: str
    line: int
    kind: str  # edited | deleted | inserted | reordered | truncated | malformed | seal
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    """What `audit verify` found."""

    path: str
    files: list[str] = field(default_factory=list)
    records: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    start: str = "empty"
    seals: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the chain is intact (and every checked seal verifies)."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "path": self.path,
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "first_seq": self.first_seq,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "start": self.start,
            "seals": self.seals,
            "problems": [
                {"file": p.file, "line": p.line, "kind": p.kind, "message": p.message}
                for p in self.problems
            ],
            "notes": self.notes,
        }


@dataclass(eq=False)
class _Entry:
    index: int
    file: str
    line: int
    seq: int
    prev: str
    hash: str
    record: dict[str, Any]

    @property
    def pos(self) -> str:
        return f"{self.file}:{self.line}"


class _Walk:
    """The state of one verification (see the module docstring for the rules)."""

    def __init__(self, report: VerifyReport, public_key: Any = None) -> None:
        self.report = report
        self.public_key = public_key
        self.entries: list[_Entry] = []
        self.problems: dict[tuple[str, int], Problem] = {}
        self.broken: set[int] = set()  # indexes after which a malformed line sat
        self.followers: dict[str, list[_Entry]] = {}  # prev -> the records that name it
        self.truncated_tail = False  # the last line of the last file is cut short

    def problem(self, file: str, line: int, kind: str, message: str) -> None:
        self.problems.setdefault((file, line), Problem(file, line, kind, message))

    # ---- pass 1: read --------------------------------------------------------------------
    def read(self, paths: list[Path], visit: Callable[[dict], None] | None) -> None:
        for number, path in enumerate(paths):
            last_file = number == len(paths) - 1
            with open(path, "rb") as handle:
                data = handle.read()
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            elif lines:  # no newline at the end of the file
                self.problem(
                    path.name,
                    len(lines),
                    "truncated",
                    "the last line is cut short (no newline): a record was truncated"
                    + ("" if last_file else " inside a rotated file"),
                )
                lines.pop()
                self.truncated_tail = last_file
            for lineno, raw in enumerate(lines, 1):
                self._read_line(path.name, lineno, raw, visit)

    def _read_line(
        self, name: str, lineno: int, raw: bytes, visit: Callable[[dict], None] | None
    ) -> None:
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = None
        if (
            not isinstance(record, dict)
            or type(record.get("seq")) is not int
            or not isinstance(record.get("prev"), str)
        ):
            self.problem(name, lineno, "malformed", "not a chain record (edited or damaged)")
            self.broken.add(len(self.entries))
            return
        entry = _Entry(
            len(self.entries), name, lineno, record["seq"], record["prev"], line_hash(raw), record
        )
        self.entries.append(entry)
        if visit is not None:
            visit(record)

    # ---- pass 2: follow the links ------------------------------------------------------
    def walk(self) -> _Entry | None:
        by_hash: dict[str, _Entry] = {}
        for entry in self.entries:
            by_hash.setdefault(entry.hash, entry)
        referenced = {e.prev for e in self.entries}
        for entry in self.entries:
            self.followers.setdefault(entry.prev, []).append(entry)
        displaced: set[int] = set()
        seen: set[str] = set()
        last: _Entry | None = None
        last_seq, last_hash = 0, GENESIS
        for e in self.entries:
            if last is None:
                self._start(e)
                last, last_seq, last_hash = e, e.seq, e.hash
                seen.add(e.hash)
                continue
            if e.seq == last_seq + 1 and e.prev == last_hash:
                last, last_seq, last_hash = e, e.seq, e.hash
            elif e.hash in seen:
                copy = by_hash[e.hash]
                self.problem(e.file, e.line, "inserted", f"a copy of the record at {copy.pos}")
            elif e.index in displaced:
                pass  # reported where the order broke
            else:
                advance = self._misfit(e, last, last_seq, last_hash, by_hash, referenced, displaced)
                if advance:
                    last, last_seq, last_hash = (
                        e,
                        (last_seq + 1 if advance == "renumber" else e.seq),
                        e.hash,
                    )
            seen.add(e.hash)
            self._check_fields(e)
        return last

    def _misfit(
        self,
        e: _Entry,
        last: _Entry,
        last_seq: int,
        last_hash: str,
        by_hash: dict[str, _Entry],
        referenced: set[str],
        displaced: set[int],
    ) -> str | None:
        """Classify a record that does not follow the last accepted one; what to do next."""
        expected = last_seq + 1
        pred = by_hash.get(e.prev)
        linked = pred is not None and pred.seq == e.seq - 1
        if linked and pred is not None:
            twin = next(
                (
                    t
                    for t in self.followers.get(e.prev, [])
                    if t is not e and (t.hash in referenced or t.index == pred.index + 1)
                ),
                None,
            )
            if twin is not None and e.hash not in referenced:
                self.problem(
                    e.file,
                    e.line,
                    "inserted",
                    f"record seq {e.seq} claims the place of {twin.pos} (both follow {pred.pos})",
                )
                return None
            if pred.index > e.index:
                self.problem(
                    e.file,
                    e.line,
                    "reordered",
                    f"record seq {e.seq} comes before record seq {pred.seq} "
                    f"({pred.pos}), which it follows",
                )
                displaced.update({e.index, pred.index})
                return None
            if pred.index in displaced:
                return "accept"
            if last.hash not in referenced and last.prev == pred.hash:
                self.problem(
                    last.file,
                    last.line,
                    "inserted",
                    f"record seq {last.seq} claims the place of {e.pos} (both follow "
                    f"{pred.pos}) and no record follows it",
                )
                return "accept"
            self.problem(
                e.file,
                e.line,
                "inserted",
                f"record seq {e.seq} repeats a place in the chain (it follows "
                f"{pred.pos}, but the chain is already at seq {last_seq})",
            )
            return None
        nxt = self.entries[e.index + 1] if e.index + 1 < len(self.entries) else None
        if nxt is not None and nxt.prev == last_hash and nxt.seq == expected:
            self.problem(
                e.file,
                e.line,
                "inserted",
                f"a record (seq {e.seq}) that is not part of the chain: the next "
                f"line follows {last.pos} directly",
            )
            return None
        if e.prev == last_hash:
            self.problem(
                e.file, e.line, "edited", f"its seq is {e.seq}, but it follows seq {last_seq}"
            )
            return "renumber"
        if e.index - 1 in self.broken or e.index in self.broken:
            return "accept"  # the malformed line before it is the problem already named
        if e.seq == expected:
            self.problem(
                last.file,
                last.line,
                "edited",
                f"record seq {last_seq} was changed: its hash is not the prev that "
                f"the next record ({e.pos}) holds",
            )
            return "accept"
        if e.seq > expected:
            gap = f"seq {expected}" if e.seq == expected + 1 else f"seq {expected}..{e.seq - 1}"
            self.problem(
                e.file, e.line, "deleted", f"{gap} missing before this record (after {last.pos})"
            )
            return "accept"
        self.problem(
            e.file,
            e.line,
            "inserted",
            f"record seq {e.seq} does not belong after seq {last_seq} ({last.pos})",
        )
        return None

    def _start(self, e: _Entry) -> None:
        report = self.report
        if e.seq == 1 and e.prev == GENESIS:
            report.start = "seq 1, the start of the chain"
        elif e.record.get("event") == ANCHOR_EVENT:
            report.start = (
                f"seq {e.seq}: an anchor after {e.record.get('after_file')} (seq "
                f"{e.record.get('after_seq')}, {e.prev}); the files before it are gone "
                "(retention)"
            )
        else:
            report.start = f"seq {e.seq}, without an anchor"
            self.problem(
                e.file,
                e.line,
                "deleted",
                f"the chain starts at seq {e.seq} without an anchor: the records "
                "before it were deleted",
            )

    def _check_fields(self, e: _Entry) -> None:
        """Fields that must agree with the record's own link."""
        event = e.record.get("event")
        if event == ANCHOR_EVENT and (
            e.record.get("after_hash") != e.prev or e.record.get("after_seq") != e.seq - 1
        ):
            self.problem(e.file, e.line, "edited", "the anchor does not match its own link")
        elif event == SEAL_EVENT:
            self._check_seal(e)
        elif event == RETENTION_EVENT:
            self.report.notes.append(
                f"{e.pos}: retention deleted {', '.join(map(str, e.record.get('deleted') or []))}"
            )
        elif event == REPAIR_EVENT:
            self.report.notes.append(
                f"{e.pos}: a writer cut off a partial line of {e.record.get('cut_bytes')} bytes "
                f"from {e.record.get('file')} (a process died while writing, or the file was "
                "truncated)"
            )

    def _check_seal(self, e: _Entry) -> None:
        record = e.record
        seal = {
            "file": e.file,
            "line": e.line,
            "seq": e.seq,
            "sealed_seq": record.get("sealed_seq"),
            "key_id": record.get("key_id"),
            "verified": None,
        }
        self.report.seals.append(seal)
        if record.get("sealed_hash") != e.prev or record.get("sealed_seq") != e.seq - 1:
            self.problem(e.file, e.line, "edited", "the seal does not match its own link")
            return
        if self.public_key is None:
            return
        problem = check_seal(record, self.public_key)
        seal["verified"] = problem is None
        if problem:
            self.problem(e.file, e.line, "seal", problem)


def verify_files(
    paths: list[Path],
    *,
    label: str,
    head: tuple[int, str] | None = None,
    public_key: Any = None,
    visit: Callable[[dict], None] | None = None,
) -> VerifyReport:
    """Verify the chain made of `paths` (in order); `head` from the head file if any."""
    report = VerifyReport(path=label, files=[p.name for p in paths])
    walk = _Walk(report, public_key)
    walk.read(paths, visit)
    last = walk.walk()
    report.records = len(walk.entries)
    if walk.entries:
        report.first_seq = walk.entries[0].seq
    if last is not None:
        report.head_seq, report.head_hash = last.seq, last.hash
        _check_head(walk, last, head)
    elif head is not None and head[0] > 0:
        walk.problem(
            report.files[-1] if report.files else "audit.jsonl",
            0,
            "deleted",
            f"no records, but the head file says the chain reached seq {head[0]}",
        )
    if public_key is not None:
        sealed = [s for s in report.seals if s["verified"]]
        after = (report.head_seq or 0) - (sealed[-1]["seq"] if sealed else 0)
        report.notes.append(
            f"{len(sealed)} seal(s) verified with the key; {after} record(s) after the last one"
        )
    elif report.seals:
        report.notes.append(f"{len(report.seals)} seal(s) not checked (give --key PUB.pem)")
    report.problems = sorted(
        walk.problems.values(),
        key=lambda p: (report.files.index(p.file) if p.file in report.files else 0, p.line),
    )
    return report


def _check_head(walk: _Walk, last: _Entry, head: tuple[int, str] | None) -> None:
    if head is None:
        return
    seq, digest = head
    if seq == last.seq + 1 and walk.truncated_tail:
        return  # the truncated last line is that record: named already
    if seq > last.seq:
        gap = f"seq {last.seq + 1}" if seq == last.seq + 1 else f"seq {last.seq + 1}..{seq}"
        walk.problem(
            last.file,
            last.line,
            "deleted",
            f"{gap} missing at the end (the head file says the chain reached seq {seq})",
        )
    elif seq == last.seq and digest != last.hash:
        walk.problem(
            last.file,
            last.line,
            "edited",
            "the last record does not match the hash in the head file",
        )
    elif seq < last.seq:
        walk.report.notes.append(f"the head file is {last.seq - seq} record(s) behind")


def verify_chain(
    path: Path,
    *,
    public_key: Any = None,
    visit: Callable[[dict], None] | None = None,
) -> VerifyReport:
    """Verify the chain at `path`: a folder (its audit.jsonl and rotated files), an active
    file (with its rotated siblings), or one rotated file on its own."""
    if path.is_file() and ROTATED_NAME.match(path.name):
        return verify_files([path], label=str(path), public_key=public_key, visit=visit)
    files = ChainFiles.at(path)
    return verify_files(
        files.all_files(),
        label=str(path),
        head=read_head(files),
        public_key=public_key,
        visit=visit,
    )
