"""One document in flight: its calls stage by stage, which are waiting, running and answered.

A document is worked in stages: stage 0 sends every chunk with the prompt ("map"); when it
has several answers, each later stage combines them ("reduce"), until one answer is left
(or MAX_COMBINE_ROUNDS rounds are done). `DocWork` only keeps the state; the scheduler
(`sovcli.batch.sched`) hands its calls out one at a time, and the runner decides the next
stage and writes the record.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sovcli.batch.backends import Completion, PromptJob
from sovcli.batch.chunklog import step_id


def now_iso() -> str:
    """The current UTC time as a record shows it (milliseconds, `Z`)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class DocWork:
    """A document whose text is extracted and chunked, and whose calls are under way."""

    doc: Any  # sovcli.batch.runner.Document
    seq: int  # admission order (ties)
    doc_id: str  # chunklog.doc_id(doc.key)
    name: str  # file name shown to the model
    extracted: Any  # sovcli.batch.extract.Extracted (OCR fields for the record)
    chunks: int = 0
    stage: int = 0
    jobs: list[PromptJob] = field(default_factory=list)
    results: list[Completion | None] = field(default_factory=list)
    todo: deque[int] = field(default_factory=deque)
    in_flight: int = 0
    completions: list[Completion] = field(default_factory=list)  # every answer, all stages
    reused: int = 0  # answers taken from the work saved by an earlier run
    closed: bool = False  # its record is written (or it failed): later answers are dropped
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=now_iso)

    def begin(self, jobs: list[PromptJob], saved: Callable[[str], Completion | None]) -> None:
        """Start a stage with `jobs`; answers saved by an earlier run are taken as they are."""
        self.jobs = list(jobs)
        self.results = [None] * len(self.jobs)
        self.todo = deque()
        for i in range(len(self.jobs)):
            found = saved(self.step_of(i)) if self.saves else None
            if found is not None:
                self.results[i] = found
                self.reused += 1
            else:
                self.todo.append(i)

    @property
    def saves(self) -> bool:
        """Whether its answers are worth saving one by one (more than one call)."""
        return self.chunks > 1

    def step_of(self, index: int) -> str:
        """The identity of call `index` of the current stage (its exact message)."""
        job = self.jobs[index]
        return step_id(job.render(job.text))

    @property
    def remaining(self) -> int:
        """Calls of this stage not answered yet."""
        return len(self.todo) + self.in_flight

    @property
    def stage_done(self) -> bool:
        """Every call of this stage is answered."""
        return all(r is not None for r in self.results)

    def take(self) -> int:
        """The next call to send (the caller holds the scheduler's lock)."""
        index = self.todo.popleft()
        self.in_flight += 1
        return index

    def give_back(self, index: int) -> None:
        """A call that could not be sent (its endpoint went away): first in line again."""
        self.in_flight -= 1
        self.todo.appendleft(index)

    def answer(self, index: int, completion: Completion) -> None:
        """Store the answer of call `index`."""
        self.in_flight -= 1
        self.results[index] = completion

    def answers(self) -> list[Completion]:
        """The answers of the stage just finished (also added to `completions`)."""
        done = [r for r in self.results if r is not None]
        self.completions.extend(done)
        return done
