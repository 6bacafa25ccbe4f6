"""`TokenStream`: the thread-safe `GenerationStream` handed out by `Engine.submit`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from sovcli.engine.types import GenerationResult, TokenEvent

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


def _set_all(events: list[asyncio.Event]) -> None:
    for ready in events:
        ready.set()


class WakeBatch:
    """Reader wake-ups gathered during one decode step and delivered once per event loop.

    Waking an asyncio reader costs a self-pipe write and a thread switch that then competes
    with the decode thread for the GIL. One call per loop per step, made just before the next
    `llama_decode` releases the GIL, replaces one per token per stream.
    """

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}

    def add(self, waiters: list[_Waiter]) -> None:
        """Remember `waiters` to wake at the next `deliver`."""
        for loop, ready in waiters:
            self._by_loop.setdefault(loop, []).append(ready)

    def deliver(self) -> None:
        """Wake every remembered reader: one `call_soon_threadsafe` per event loop."""
        if not self._by_loop:
            return
        pending, self._by_loop = self._by_loop, {}
        for loop, events in pending.items():
            with contextlib.suppress(RuntimeError):  # the reader's loop is closed
                loop.call_soon_threadsafe(_set_all, events)


class TokenStream:
    """Events produced by the decode thread, consumed by one sync or async reader.

    Leaving the iteration early (break, exception, client disconnect) cancels the request.
    """

    def __init__(self, request_id: str | None, on_cancel: Callable[[TokenStream], None]) -> None:
        self.request_id = request_id
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._on_cancel = on_cancel
        self.cancelled = False

    # --- producer side (decode thread) -------------------------------------------------
    def push(self, event: TokenEvent, wake: WakeBatch | None = None) -> None:
        """Hand one event to the reader (called by the engine).

        With `wake`, an asyncio reader is woken when the engine delivers that batch, not now.
        """
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            if not self._waiters:
                return
            waiters = list(self._waiters)
        batch = wake or WakeBatch()
        batch.add(waiters)
        if wake is None:
            batch.deliver()

    def finish(self, result: GenerationResult, last: TokenEvent) -> None:
        """Store the result and push the final event."""
        self._result = result
        self._done.set()
        self.push(last)

    # --- consumer side --------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating; the stream ends with finish_reason "cancelled" at the next step."""
        if not self.cancelled and not self._done.is_set():
            self.cancelled = True
            self._on_cancel(self)

    @property
    def done(self) -> bool:
        """True once the final event has been produced."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request ends and return its `GenerationResult`."""
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        assert self._result is not None
        return self._result

    def __iter__(self) -> Iterator[TokenEvent]:
        finished = False
        try:
            while True:
                with self._cond:
                    while not self._events:
                        self._cond.wait()
                    event = self._events.popleft()
                if event.finish_reason is not None:
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        waiter = (loop, ready)
        with self._cond:
            self._waiters.append(waiter)
        finished = False
        try:
            while True:
                ready.clear()
                with self._cond:
                    event = self._events.popleft() if self._events else None
                if event is None:
                    await ready.wait()
                    continue
                if event.finish_reason is not None:
                    finished = True
                yield event
                if finished:
                    return
        finally:
            with self._cond:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if not finished:
                self.cancel()
