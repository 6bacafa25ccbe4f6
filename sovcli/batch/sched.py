"""Which call runs next: documents admitted shortest first, sequences shared fairly.

The engine decodes `--parallel` sequences together; each is a "slot" (a thread that sends
one call at a time). Extraction threads admit documents smallest file first, a few ahead of
the slots, and turn each into a `DocWork`. A free slot takes the call of the document with
the fewest calls running, then the fewest calls left, then the earliest admitted: a long
document gets one sequence while small documents are waiting, and all of them once nothing
else is. So small documents are recorded while a long one runs, and the long one still
makes steady progress (its answers saved one by one, see `sovcli.batch.chunklog`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from sovcli.batch.backends import Completion
from sovcli.batch.work import DocWork

WAIT_S = 0.2  # how often waiting threads look at the stop flag


class Scheduler:
    """The documents and calls of one run, shared by extraction and slot threads."""

    def __init__(self, documents: list, lookahead: int, stop: threading.Event) -> None:
        self._cond = threading.Condition()
        self._admit = deque(documents)  # smallest first (BatchRunner.begin)
        self._active: list[DocWork] = []
        self._extracting = 0
        self.open = len(documents)  # documents without a record yet
        self.lookahead = max(1, lookahead)
        self.stop = stop

    # --- admission (extraction threads) --------------------------------------------------

    def _waiting(self) -> int:
        return self._extracting + sum(1 for w in self._active if w.todo)

    def next_document(self):  # -> Document | None
        """The next document to extract; None when there is none or the run stops."""
        with self._cond:
            while not self.stop.is_set() and self._admit and self._waiting() >= self.lookahead:
                self._cond.wait(WAIT_S)
            if self.stop.is_set() or not self._admit:
                return None
            self._extracting += 1
            return self._admit.popleft()

    def admitted(self, work: DocWork | None) -> None:
        """An extraction is over: `work` has calls to run (None: it was recorded already)."""
        with self._cond:
            self._extracting -= 1
            if work is not None and not work.closed:
                self._active.append(work)
            self._cond.notify_all()

    def not_admitted(self) -> list:
        """Documents never extracted (left for the next run)."""
        with self._cond:
            return list(self._admit)

    # --- calls (slot threads) ------------------------------------------------------------

    def next_call(self, usable: Callable[[], bool]) -> tuple[DocWork, int] | None:
        """The next call to send, by fair share; None when the run is over for this slot."""
        with self._cond:
            while True:
                if self.stop.is_set() or self.open <= 0 or not usable():
                    return None
                ready = [w for w in self._active if w.todo and not w.closed]
                if ready:
                    work = min(ready, key=lambda w: (w.in_flight, w.remaining, w.seq))
                    return work, work.take()
                self._cond.wait(WAIT_S)

    def give_back(self, work: DocWork, index: int) -> None:
        """Requeue a call that could not be sent."""
        with self._cond:
            work.give_back(index)
            self._cond.notify_all()

    def answered(self, work: DocWork, index: int, completion: Completion) -> bool:
        """Store an answer; True when it completed the stage (the caller moves it on)."""
        with self._cond:
            if work.closed:
                return False
            work.answer(index, completion)
            return work.stage_done

    def failed_call(self, work: DocWork) -> bool:
        """A call failed for good: True for the first failure (the caller records it)."""
        with self._cond:
            work.in_flight -= 1
            if work.closed:
                return False
            work.closed = True
            return True

    def staged(self, work: DocWork) -> None:
        """`work` has a new stage of calls."""
        with self._cond:
            self._cond.notify_all()

    def finished(self, work: DocWork | None) -> None:
        """A document is recorded (its work, if it had any, leaves the scheduler)."""
        with self._cond:
            if work is not None:
                work.closed = True
                if work in self._active:
                    self._active.remove(work)
            self.open -= 1
            self._cond.notify_all()

    def unfinished(self) -> list[DocWork]:
        """Documents with calls under way or saved, not recorded."""
        with self._cond:
            return [w for w in self._active if not w.closed]

    def wake(self) -> None:
        """Wake every waiting thread (to look at the stop flag)."""
        with self._cond:
            self._cond.notify_all()
