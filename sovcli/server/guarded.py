"""An engine that can be unloaded while the server runs, safely.

Unloading frees llama.cpp's model and context; a call still running in a worker thread
(tokenizing, rendering, embedding) would then read freed memory and take the process down.
`GuardedEngine` counts the calls in progress; `retire()` succeeds only when none is, and from
then on every new call gets a 503 ("unloaded, retry") instead of reaching the engine. Streams
outlive `submit`: the registry counts them as the model's requests in flight and never
retires a model that has any.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from sovcli.engine.types import EngineProtocol, ModelInfo
from sovcli.server.errors import overloaded


class GuardedEngine:
    """Delegates to `inner`, counting calls; `retire()` makes further calls a 503."""

    def __init__(self, inner: EngineProtocol, name: str, retry_after_s: int = 1) -> None:
        self.inner = inner
        self.info: ModelInfo = inner.info
        self.name = name
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._active = 0
        self._retired = False

    @property
    def active_calls(self) -> int:
        """Calls running now."""
        return self._active

    @property
    def retired(self) -> bool:
        """Whether the engine is being (or has been) unloaded."""
        return self._retired

    def retire(self) -> bool:
        """Refuse new calls from now on; False (and nothing changes) while a call runs."""
        with self._lock:
            if self._active:
                return False
            self._retired = True
            return True

    def close(self) -> None:
        """Retire and free the engine (cancels its streams)."""
        with self._lock:
            self._retired = True
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._retired:
                    raise overloaded(
                        self.retry_after_s, f"the model '{self.name}' was just unloaded; retry"
                    )
                self._active += 1
            try:
                return attribute(*args, **kwargs)
            finally:
                with self._lock:
                    self._active -= 1

        self.__dict__[name] = guarded  # found directly from now on (inner never changes)
        return guarded
