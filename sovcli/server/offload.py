"""Work that must not run on the event loop: tokenizing, rendering and parsing big inputs.

While the loop runs Python, no other request (not even `/health`) is answered, so a 3.9 MB
prompt tokenized on it froze every client for 1.5 s. `Offloader.run` runs a call in a worker
thread instead; big inputs go to their own small pool, so a burst of them queues behind
itself rather than in front of everyone's small requests. If the request is cancelled (the
client left) while its call still runs, `orphan` receives the result when it arrives (e.g.
to cancel an engine stream nobody will read).
"""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
BIG_INPUT = 64 * 1024  # characters or bytes from which an input counts as big
SMALL_WORKERS = 4
BIG_WORKERS = 2


class Offloader:
    """Two thread pools: one for ordinary calls, one for calls on big inputs."""

    def __init__(self) -> None:
        self._small = ThreadPoolExecutor(SMALL_WORKERS, thread_name_prefix="sovcli-work")
        self._big = ThreadPoolExecutor(BIG_WORKERS, thread_name_prefix="sovcli-big")

    async def run(
        self,
        func: Callable[..., T],
        *args: Any,
        big: bool = False,
        orphan: Callable[[T], None] | None = None,
    ) -> T:
        """`func(*args)` in a worker thread; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        pool = self._big if big else self._small
        future = loop.run_in_executor(pool, functools.partial(_call, func, args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if orphan is not None:
                future.add_done_callback(functools.partial(_hand_over, orphan))
            raise
        except BaseException:
            # The exception's traceback holds this frame, this frame the future, the future
            # the exception: a cycle that would keep every frame's locals (the request body,
            # the prompt) alive until the garbage collector runs. Cut it here.
            del future
            raise

    def close(self) -> None:
        """Let running calls finish; start no new ones."""
        self._small.shutdown(wait=False, cancel_futures=True)
        self._big.shutdown(wait=False, cancel_futures=True)


def _call(func: Callable[..., T], args: tuple[Any, ...]) -> T:
    """`func(*args)`; an exception leaves with the locals of its frames cleared.

    A traceback keeps every frame it passes alive, and with them their locals (a 3.9 MB
    prompt's text, bytes and token list: ~40 MB), until the cycle the exception sits in
    (future -> exception -> traceback -> frames) is collected, which can take many requests.
    """
    try:
        return func(*args)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def _hand_over(orphan: Callable[[Any], None], future: asyncio.Future | Future) -> None:
    if not future.cancelled() and future.exception() is None:
        orphan(future.result())


def is_big(value: str | bytes | list[Any]) -> bool:
    """Whether an input is big enough for the big pool."""
    return len(value) >= BIG_INPUT
