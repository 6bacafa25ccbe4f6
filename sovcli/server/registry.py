"""The served models: loaded at start or on first request, unloaded when idle, within a budget.

Every model has a handle, found by any of its names. A model named on the command line is
loaded when the server starts (a failure there stops the server); with `--all-installed`,
any model in the store is also served and loaded on its first request. A model idle for its
keep-alive (`--keep-alive`, or the last Ollama request's `keep_alive`) is unloaded; loading
one more than `--max-loaded` or `--memory-budget` allows first unloads the least recently
used idle model (a 503 when every loaded model is busy). All of this runs on the event loop
(loads and closes in worker threads), so a handler that holds a handle between two awaits
cannot see it change under a synchronous step; `GuardedEngine` covers the calls that run in
worker threads meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sovcli.engine.types import EngineConfig, EngineProtocol
from sovcli.errors import PolicyDenied, SovcliError
from sovcli.server.errors import APIError, from_sovcli_error, overloaded
from sovcli.server.footprint import Shape, estimate_bytes, format_size, read_shape
from sovcli.server.guarded import GuardedEngine
from sovcli.server.settings import ServedModel, ServerSettings

if TYPE_CHECKING:
    from sovcli.store.model import InstalledModel

EngineFactory = Callable[[ServedModel, ServerSettings], EngineProtocol]
REAP_INTERVAL_S = 0.2  # how often idle models are checked for expiry
MIN_IDLE_S = 0.5  # a model used this recently is never unloaded by the reaper
STORE_RESCAN_S = 2.0  # an unknown name looks in the store at most this often
DEFAULT_TAG = "latest"  # Ollama clients add `:latest` to a name without a tag


def default_engine_factory(model: ServedModel, settings: ServerSettings) -> EngineProtocol:
    """Load `model` with the shared engine (continuous batching over `settings.parallel`).

    `--draft` drafts for the models named at start only: one found in the store on demand
    (--all-installed) may not share the draft model's vocabulary, so it drafts from n-grams.
    """
    from sovcli.engine.conversation import use_template
    from sovcli.engine.core import Engine

    preset = model.preset  # a created model's: its context and chat template, unless --ctx
    spec: dict[str, Any] = {"speculative": settings.speculative}
    if settings.draft_model_path and not model.from_store:
        spec["draft_model_path"] = settings.draft_model_path
    if settings.draft_max is not None:
        spec["draft_max"] = settings.draft_max
    engine = Engine(
        EngineConfig(
            model_path=model.path,
            n_ctx=settings.ctx or (preset.parameters.get("ctx") if preset else None),
            n_parallel=settings.parallel,
            n_threads=settings.threads,
            prompt_cache_mib=settings.prompt_cache_mib,
            **spec,
        )
    )
    use_template(engine, preset.template if preset else None)
    return engine


FACT_KEYS = (
    "architecture",
    "model_name",
    "parameter_count",
    "quantization",
    "context_length",
    "total_size",
    "created_at",
    "license",
)


def served_model(
    installed: InstalledModel, ref: str, *, from_store: bool = False, short_name: bool = True
) -> ServedModel:
    """A store model as served: `ref` first, then its other names (`name:tag`, `name` when
    `short_name`, the file name), its digest and the manifest's facts for /api/tags and ps."""
    from sovcli.governance.identity import model_digest
    from sovcli.store.preset import preset_of

    path = installed.gguf_path
    preset = preset_of(installed)  # a created model: not named by its base's file name
    files = () if preset else (path.stem, path.name)
    names = (installed.ref, installed.name if short_name else ref, *files)
    aliases: list[str] = []
    for name in names:
        if name != ref and name not in aliases:
            aliases.append(name)
    facts = {key: installed.manifest.get(key) for key in FACT_KEYS}
    return ServedModel(
        ref=ref,
        path=str(path),
        aliases=tuple(aliases),
        digest=model_digest(installed),
        facts=facts,
        from_store=from_store,
        preset=preset,
    )


@dataclass(eq=False)
class ModelHandle:
    """A served model: its engine while loaded, its state, use and keep-alive."""

    served: ServedModel
    engine: GuardedEngine | None = None
    state: str = "unloaded"  # unloaded | loading | ready | error
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    keep_alive_s: float | None = None  # idle time before unloading (None: never)
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float | None = None  # wall time of the last load
    load_s: float = 0.0  # how long the last load took
    memory_bytes: int = 0  # estimated while loaded (see footprint)
    leases: int = 0  # requests that hold the model between their steps (Ollama routes)
    loads: int = 0  # times it was loaded since the server started
    installed: Any = None  # the InstalledModel of a model found in the store on demand
    refused: Any = None  # the site policy's PolicyDenied at its last load (403s until one passes)
    loading: asyncio.Future | None = field(default=None, repr=False)
    shape: Shape | None = None
    _in_flight: int = field(default=0, repr=False)

    @property
    def in_flight(self) -> int:
        """Generation requests admitted (decoding or queued)."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        self.last_used = time.monotonic()

    @property
    def id(self) -> str:
        """The id clients see in /v1/models and in responses."""
        return self.served.ref

    def ids(self) -> tuple[str, ...]:
        """Every name this model answers to."""
        return (self.served.ref, *self.served.aliases)

    def touch(self) -> None:
        """Note a use now (the keep-alive counts from the last use)."""
        self.last_used = time.monotonic()

    @property
    def idle(self) -> bool:
        """Loaded and doing nothing: no request in flight, none holding it, no engine call."""
        engine = self.engine
        return (
            self.state == "ready"
            and self._in_flight == 0
            and self.leases == 0
            and (engine is None or engine.active_calls == 0)
        )

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until an idle model is unloaded (0: due); None: kept forever."""
        if self.keep_alive_s is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self.keep_alive_s - (now - self.last_used))


class ModelRegistry:
    """Finds, loads and unloads the served models (see the module docstring)."""

    def __init__(
        self,
        settings: ServerSettings,
        engine_factory: EngineFactory | None = None,
        on_fatal: Callable[[SovcliError | Exception], None] | None = None,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._factory = engine_factory or default_engine_factory
        self._on_fatal = on_fatal
        self._log = log or _server_log
        self._handles: list[ModelHandle] = []
        self._by_id: dict[str, ModelHandle] = {}
        for served in settings.models:
            self._add(served).state = "loading"  # loaded at start (see start_loading)
        self._preloading = bool(settings.models)
        self._failed = False
        self._closed = False
        self._scanned = 0.0
        self._scan_lock = threading.Lock()
        self._load_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []
        self._unloaded_drafts = (0, 0)  # drafted, accepted by engines since unloaded

    # ---- names ------------------------------------------------------------------------
    def _add(self, served: ServedModel) -> ModelHandle:
        handle = ModelHandle(served=served, keep_alive_s=self.settings.keep_alive_s)
        self._handles.append(handle)
        for name in handle.ids():
            self._by_id.setdefault(name, handle)
        return handle

    @property
    def handles(self) -> list[ModelHandle]:
        """Every served model (with `--all-installed`: every installed one, rescanned)."""
        if self.settings.all_installed:
            self._scan_store()
        return list(self._handles)

    def loaded(self) -> list[ModelHandle]:
        """The models loaded now."""
        return [h for h in self._handles if h.state == "ready"]

    def find(self, model_id: str) -> ModelHandle | None:
        """The handle a request's `model` names, or None. Also `name:latest` for `name`,
        and (with `--all-installed`) any model in the store, by its store names only."""
        handle = self._lookup(model_id)
        if handle is None and self.settings.all_installed:
            self._scan_store()
            handle = self._lookup(model_id)
        return handle

    def _lookup(self, model_id: str) -> ModelHandle | None:
        handle = self._by_id.get(model_id)
        if handle is None and model_id.endswith(".gguf"):  # a served file, by another path
            handle = self._by_id.get(Path(model_id).name)
        if handle is None and model_id.endswith(":" + DEFAULT_TAG):
            handle = self._by_id.get(model_id[: -len(DEFAULT_TAG) - 1])
        return handle

    def rescan(self) -> None:
        """Look in the store again at the next lookup (after a pull)."""
        self._scanned = 0.0

    def _scan_store(self) -> None:
        """Add a handle for each installed model not served yet (rate-limited: a flood of
        unknown names reads the store at most once every STORE_RESCAN_S)."""
        with self._scan_lock:  # /api/tags scans from a worker thread
            now = time.monotonic()
            if self._scanned and now - self._scanned < STORE_RESCAN_S:
                return
            self._scanned = now
            self._add_installed()

    def _add_installed(self) -> None:
        from sovcli.resolve import find_installed
        from sovcli.store.registry import list_installed

        served_paths = {h.served.path for h in self._handles}
        try:
            installed = list_installed()
        except SovcliError as exc:
            self._log(f"cannot list the store: {exc.message}")
            return
        for model in installed:
            if str(model.gguf_path) in served_paths:
                continue
            try:
                preferred = find_installed(model.name)
            except SovcliError:
                preferred = None
            short = preferred is not None and preferred.ref == model.ref
            try:
                served = served_model(model, model.ref, from_store=True, short_name=short)
            except SovcliError as exc:  # e.g. a created model whose preset was tampered with
                self._log(f"not serving {model.ref}: {exc.message}")
                continue
            handle = self._add(served)
            handle.installed = model

    # ---- lookups for requests -----------------------------------------------------------
    def _named(self, model_id: str | None) -> ModelHandle:
        if model_id is None:
            if len(self._handles) != 1:
                raise APIError(400, "'model' is required", param="model")
            return self._handles[0]
        handle = self.find(model_id)
        if handle is None:
            served = ", ".join(h.id for h in self._handles) or "none yet"
            raise APIError(
                404,
                f"the model '{model_id[:200]}' is not served here (served: {served})",
                param="model",
                code="model_not_found",
            )
        return handle

    def resolve(self, model_id: str | None) -> ModelHandle:
        """The loaded handle for a request's `model`, without waiting: a model that is not
        loaded starts loading and the request gets a 503 with Retry-After."""
        handle = self._named(model_id)
        if handle.state == "ready" and handle.engine is not None:
            handle.touch()
            return handle
        if handle.state != "loading":
            task = asyncio.get_running_loop().create_task(self._quiet_load(handle))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
            if handle.refused is not None:  # that load asks the policy again
                raise from_sovcli_error(handle.refused)
        raise overloaded(
            self.settings.limits.retry_after_s, f"the model '{handle.id}' is still loading; retry"
        )

    async def acquire(self, model_id: str | None) -> ModelHandle:
        """The handle for `model_id`, loaded (waiting for the load if needed)."""
        handle = self._named(model_id)
        while not (handle.state == "ready" and handle.engine is not None):
            if self._closed:
                raise overloaded(self.settings.limits.retry_after_s, "the server is stopping")
            if handle.state == "loading" and handle.loading is not None:
                await asyncio.shield(handle.loading)
            else:
                await self._load(handle)
        handle.touch()
        return handle

    # ---- loading ----------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load the models named at start, one after another, and start the idle reaper
        (call from the event loop: the app's lifespan)."""
        loop = asyncio.get_running_loop()
        self._load_lock = asyncio.Lock()
        for handle in self._handles:
            if handle.state == "loading":
                handle.loading = loop.create_future()
        self._tasks.append(loop.create_task(self._preload()))
        self._tasks.append(loop.create_task(self._reap_forever()))

    async def _preload(self) -> None:
        waiting = [h for h in self._handles if h.state == "loading" and h.loading is not None]
        try:
            for handle in waiting:
                need = await asyncio.to_thread(self._estimate, handle)
                if not self._fits(handle, need, self.loaded()):
                    self._log(f"{handle.id} not loaded at start (--max-loaded or "
                              "--memory-budget); it loads on its first request")  # fmt: skip
                    self._load_failed(handle, None)
                    continue
                try:
                    await self._load(handle, reserved=True)
                except APIError:
                    self._failed = True
                    return
        finally:
            self._preloading = False
            for handle in waiting:
                if handle.state == "loading":
                    self._load_failed(handle, None)

    async def _quiet_load(self, handle: ModelHandle) -> None:
        with contextlib.suppress(APIError):  # the next request for it gets the reason
            await self._load(handle)

    async def _load(self, handle: ModelHandle, *, reserved: bool = False) -> None:
        """Load `handle` (after making room); an APIError when it cannot be. `reserved`:
        the caller already marked it loading (the start-up preload)."""
        loop = asyncio.get_running_loop()
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        if not reserved:
            if handle.state == "loading" and handle.loading is not None:
                await asyncio.shield(handle.loading)
                return
            handle.state, handle.error = "loading", None
            handle.loading = loop.create_future()
        assert handle.loading is not None
        try:
            async with self._load_lock:
                await self._check_policy(handle)
                need = await asyncio.to_thread(self._estimate, handle)
                await self._make_room(handle, need)
                started = time.perf_counter()
                engine = await asyncio.to_thread(self._factory, handle.served, self.settings)
        except BaseException as exc:
            self._load_failed(handle, exc)
            raise self._load_error(handle, exc) from None
        if self._closed:
            await asyncio.to_thread(engine.close)
            self._load_failed(handle, RuntimeError("the server is stopping"))
            raise overloaded(self.settings.limits.retry_after_s, "the server is stopping")
        handle.load_s = time.perf_counter() - started
        handle.memory_bytes = self._estimate(handle, engine.info.n_ctx)
        handle.engine = GuardedEngine(engine, handle.id, self.settings.limits.retry_after_s)
        handle.keep_alive_s = self.settings.keep_alive_s  # a request may then set its own
        handle.state, handle.loaded_at, handle.loads = "ready", time.time(), handle.loads + 1
        handle.refused = None
        handle.touch()
        handle.loading.set_result(None)
        info = engine.info
        self._log(
            f"loaded {handle.id} ({info.architecture}, {info.n_params / 1e6:.0f}M params, "
            f"ctx {info.n_ctx} x {self.settings.parallel}, ~{format_size(handle.memory_bytes)})"
            f" in {handle.load_s:.1f}s"
        )

    def _load_failed(self, handle: ModelHandle, exc: BaseException | None) -> None:
        """Back to unloaded (waiters look again); `exc` None: not loaded, no error."""
        future = handle.loading
        handle.state = "unloaded"
        handle.refused = exc if isinstance(exc, PolicyDenied) else None
        if future is not None and not future.done():
            future.set_result(None)
        if exc is None or isinstance(exc, (APIError, asyncio.CancelledError)):
            return
        handle.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if self._preloading and not handle.served.from_store:
            handle.state = "error"
            if self._on_fatal is not None and isinstance(exc, Exception):
                self._on_fatal(exc)
            return
        self._log(f"cannot load {handle.id}: {handle.error}")

    def _load_error(self, handle: ModelHandle, exc: BaseException) -> BaseException:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, (SovcliError,)) and exc.http_status in (403, 404):
            return from_sovcli_error(exc)
        if isinstance(exc, asyncio.CancelledError):
            return exc
        return APIError(
            500,
            f"the model '{handle.id}' could not be loaded (see the server log)",
            code="model_load_failed",
        )

    async def _check_policy(self, handle: ModelHandle) -> None:
        """Every load passes the site policy first (403 if not): a model found in the store
        on demand, and one named at start when it loads again (the policy may have changed)."""
        from sovcli.server.policy_gate import check_load

        await asyncio.to_thread(check_load, handle.served, handle.installed)

    def _estimate(self, handle: ModelHandle, n_ctx: int | None = None) -> int:
        settings = self.settings
        if handle.shape is None:
            handle.shape = read_shape(handle.served.path)
        return estimate_bytes(
            handle.served.path,
            handle.shape,
            n_ctx or settings.ctx,
            settings.parallel,
            settings.prompt_cache_mib,
        )

    def _fits(self, handle: ModelHandle, need: int, others: list[ModelHandle]) -> bool:
        """Whether `handle` fits beside `others` (the models loaded now)."""
        settings = self.settings
        if settings.max_loaded is not None and len(others) + 1 > settings.max_loaded:
            return False
        if settings.memory_budget is None:
            return True
        return sum(h.memory_bytes for h in others) + need <= settings.memory_budget

    async def _make_room(self, handle: ModelHandle, need: int) -> None:
        """Unload idle models, least recently used first, until `handle` fits."""
        budget = self.settings.memory_budget
        if budget is not None and need > budget:
            raise APIError(
                503,
                f"the model '{handle.id}' needs about {format_size(need)}, more than this "
                f"server's --memory-budget of {format_size(budget)}",
                type_="server_error",
                code="model_too_large",
            )
        while True:
            others = [h for h in self.loaded() if h is not handle]
            if self._fits(handle, need, others):
                return
            idle = sorted((h for h in others if h.idle), key=lambda h: h.last_used)
            if not idle:
                raise overloaded(
                    self.settings.limits.retry_after_s,
                    f"cannot load '{handle.id}' now: the models loaded fill --max-loaded or "
                    "--memory-budget and all are busy; retry",
                )
            await self.unload(idle[0], reason="to make room")

    # ---- unloading --------------------------------------------------------------------
    async def unload(self, handle: ModelHandle, *, reason: str = "") -> bool:
        """Unload `handle` now if it is idle; False when it is busy (or not loaded)."""
        engine = handle.engine
        if handle.state != "ready" or engine is None or not handle.idle:
            return False
        if not engine.retire():
            return False
        self._keep_draft_totals(engine)
        handle.engine, handle.state, handle.loaded_at = None, "unloaded", None
        freed, handle.memory_bytes = handle.memory_bytes, 0
        await asyncio.to_thread(engine.close)
        why = f" ({reason})" if reason else ""
        self._log(f"unloaded {handle.id}{why}, ~{format_size(freed)} freed")
        return True

    async def stop(self, model_id: str) -> str:
        """`sovcli stop`: unload now if idle (`unloaded`), else as soon as it is idle
        (`unloading`); `not_loaded` when it was not loaded."""
        handle = self._named(model_id)
        if handle.state != "ready":
            return "not_loaded"
        if await self.unload(handle, reason="stopped"):
            return "unloaded"
        handle.keep_alive_s = 0.0
        return "unloading"

    async def _reap_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for handle in list(self._handles):
                left = handle.expires_in(now)
                if left is None or left > 0 or not handle.idle:
                    continue
                if now - handle.last_used < MIN_IDLE_S:
                    continue
                await self.unload(handle, reason="idle")

    # ---- speculative decoding counters -------------------------------------------------
    def draft_totals(self) -> tuple[int, int]:
        """Tokens drafted and accepted by every engine since the server started (the loaded
        ones' `EngineStats` totals plus those of engines since unloaded): /metrics counters."""
        drafted, accepted = self._unloaded_drafts
        for handle in self._handles:
            if handle.engine is not None:
                stats = handle.engine.inner.stats()  # the inner engine: a retired one answers
                drafted += stats.drafted_tokens_total
                accepted += stats.accepted_tokens_total
        return drafted, accepted

    def _keep_draft_totals(self, engine: GuardedEngine) -> None:
        """Add an engine's totals to the unloaded ones' before it goes (counters never drop)."""
        stats = engine.inner.stats()
        drafted, accepted = self._unloaded_drafts
        self._unloaded_drafts = (
            drafted + stats.drafted_tokens_total,
            accepted + stats.accepted_tokens_total,
        )

    # ---- status and shutdown ----------------------------------------------------------
    def status(self) -> str:
        """`loading` while the models named at start load, `error` if one failed, else
        `ready` (models unloaded since load again on their next request)."""
        if self._failed or any(h.state == "error" for h in self._handles):
            return "error"
        return "loading" if self._preloading else "ready"

    async def aclose(self) -> None:
        """Stop the reaper and loads, close every engine (cancels what still runs)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close every loaded engine (cancels what is still running)."""
        self._closed = True
        engines = [h.engine for h in self._handles if h.engine is not None]
        for handle in self._handles:
            handle.engine = None
            handle.state = "unloaded"
        for engine in engines:
            engine.close()


def _server_log(text: str) -> None:
    from sovcli.server.gate import log_line

    log_line(text)
