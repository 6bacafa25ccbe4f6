"""The served models: one engine each, loaded in the background, found by any of their ids."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sovcli.engine.types import EngineConfig, EngineProtocol
from sovcli.errors import SovcliError
from sovcli.server.errors import APIError, overloaded
from sovcli.server.settings import ServedModel, ServerSettings

EngineFactory = Callable[[ServedModel, ServerSettings], EngineProtocol]


def default_engine_factory(model: ServedModel, settings: ServerSettings) -> EngineProtocol:
    """Load `model` with the shared engine (continuous batching over `settings.parallel`)."""
    from sovcli.engine.core import Engine

    return Engine(
        EngineConfig(
            model_path=model.path,
            n_ctx=settings.ctx,
            n_parallel=settings.parallel,
            n_threads=settings.threads,
            prompt_cache_mib=settings.prompt_cache_mib,
        )
    )


@dataclass
class ModelHandle:
    """A served model and its engine (None while loading)."""

    served: ServedModel
    engine: EngineProtocol | None = None
    state: str = "loading"  # loading | ready | error
    error: str | None = None
    in_flight: int = 0  # generation requests admitted (decoding or queued)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        """The id clients see in /v1/models and in responses."""
        return self.served.ref

    def ids(self) -> tuple[str, ...]:
        """Every name this model answers to."""
        return (self.served.ref, *self.served.aliases)


class ModelRegistry:
    """Loads engines in a background thread and resolves request `model` fields."""

    def __init__(
        self,
        settings: ServerSettings,
        engine_factory: EngineFactory | None = None,
        on_fatal: Callable[[SovcliError | Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self._factory = engine_factory or default_engine_factory
        self._on_fatal = on_fatal
        self.handles = [ModelHandle(served=m) for m in settings.models]
        self._by_id: dict[str, ModelHandle] = {}
        for handle in self.handles:
            for name in handle.ids():
                self._by_id.setdefault(name, handle)
        self._loader: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def start_loading(self) -> None:
        """Load every model, one after another, without blocking the caller."""
        self._loader = threading.Thread(target=self._load_all, name="sovcli-load", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        from sovcli.server.gate import log_line as log

        for handle in self.handles:
            started = time.perf_counter()
            try:
                engine = self._factory(handle.served, self.settings)
            except Exception as exc:  # reported once, then the server stops
                handle.state = "error"
                handle.error = str(exc)
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                return
            with self._lock:
                if self._closed:
                    engine.close()
                    return
                handle.engine = engine
                handle.state = "ready"
            info = engine.info
            log(
                f"loaded {handle.id} ({info.architecture}, {info.n_params / 1e6:.0f}M params, "
                f"ctx {info.n_ctx} x {self.settings.parallel}) in "
                f"{time.perf_counter() - started:.1f}s"
            )

    def status(self) -> str:
        """`ready` when every model is loaded, `error` if one failed, else `loading`."""
        states = {h.state for h in self.handles}
        if "error" in states:
            return "error"
        return "ready" if states == {"ready"} else "loading"

    def resolve(self, model_id: str | None) -> ModelHandle:
        """The handle for a request's `model` (optional when one model is served)."""
        if model_id is None:
            if len(self.handles) != 1:
                raise APIError(400, "'model' is required", param="model")
            handle = self.handles[0]
        else:
            handle = self._by_id.get(model_id) or self._by_id.get(Path(model_id).name)
            if handle is None:
                served = ", ".join(h.id for h in self.handles)
                raise APIError(
                    404,
                    f"the model '{model_id}' is not served here (served: {served})",
                    param="model",
                    code="model_not_found",
                )
        if handle.state != "ready" or handle.engine is None:
            raise overloaded(
                self.settings.limits.retry_after_s, f"the model '{handle.id}' is still loading"
            )
        return handle

    def close(self) -> None:
        """Close every loaded engine (cancels what is still running)."""
        with self._lock:
            self._closed = True
            engines = [h.engine for h in self.handles if h.engine is not None]
            for handle in self.handles:
                handle.engine = None
                handle.state = "loading"
        for engine in engines:
            engine.close()
