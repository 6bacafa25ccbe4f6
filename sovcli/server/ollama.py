"""The Ollama API on the same server and port as the OpenAI one.

`/api/chat`, `/api/generate` (streamed NDJSON by default, or one object), `/api/embed` and
the legacy `/api/embeddings`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`, and
`/api/pull` (through sovcli's own pull and site policy, only when serve was started with
`--allow-pull`). `/api/stop` is sovcli's own: it unloads a model (what `sovcli stop` calls).

Requests pass the same gate as the OpenAI routes (API keys, body cap, request log, metrics,
audit records). Models are named as sovcli names them (`smollm2-135m`, `name:tag`, and
`name:latest` for `name`); a model that is not loaded is loaded first (the request waits),
and every request sets the model's keep-alive (`keep_alive`, else the server's default).
Errors are Ollama's `{"error": "message"}` with the HTTP status (`ollama_shape` reshapes them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sovcli import __version__
from sovcli.engine.types import EngineProtocol, GenerationRequest
from sovcli.errors import SovcliError
from sovcli.server import ollama_protocol as proto
from sovcli.server.errors import APIError, bad_request
from sovcli.server.gate import RequestRecord
from sovcli.server.grammars import GrammarCache
from sovcli.server.handlers import SSEResponse, api_endpoint, embed_texts
from sovcli.server.jsonbody import parse_json_body
from sovcli.server.offload import Offloader, is_big
from sovcli.server.ollama_models import ps_entry, show_body, tag_entry
from sovcli.server.ollama_run import (
    Accounting,
    Generation,
    OllamaFormat,
    collect,
    events,
    failure,
    submit,
)
from sovcli.server.presets import preset_parser
from sovcli.server.registry import ModelHandle
from sovcli.server.settings import Limits
from sovcli.server.state import ServerState
from sovcli.server.tools import (
    HeldCall,
    parse_tool_calls,
    prepare_messages,
    template_supports_tools,
)
from sovcli.server.validate import check_generation

Endpoint = Callable[[Request], Awaitable[Response]]
Parsed = TypeVar("Parsed")
EMBED_MAX_TOKENS = 2048  # the engine's embedding context (at most 2048 tokens)


def _record(request: Request) -> RequestRecord:
    return request.scope["state"]["record"]


class _Streamed:
    """A streamed response that ends its generation however the stream goes (even when
    the client left before the first byte)."""

    def __init__(self, gen: Generation, books: Accounting) -> None:
        self.gen = gen

        def on_disconnect() -> None:
            gen.record.disconnected = True
            gen.stream.cancel()

        self.inner = SSEResponse(events(gen, books), on_disconnect)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            await self.gen.end()


class OllamaHandlers:
    """The `/api/*` endpoints of one app (they share its `ServerState`)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.grammars = GrammarCache(state.settings.limits.grammar_cache_bytes)
        self.offload = Offloader()
        self.books = Accounting(state)
        self._pull_lock = asyncio.Lock()

    def close(self) -> None:
        """Stop the worker threads."""
        self.offload.close()

    # ---- plumbing ------------------------------------------------------------------
    async def _parsed(
        self, request: Request, parse: Callable[[dict[str, Any], Limits], Parsed]
    ) -> Parsed:
        raw = await request.body()
        limits = self.state.settings.limits
        if not is_big(raw):
            return parse(parse_json_body(raw), limits)
        return await self.offload.run(lambda: parse(parse_json_body(raw), limits), big=True)

    async def _hold(
        self, model: str, keep_alive: Any, record: RequestRecord
    ) -> tuple[ModelHandle, float]:
        """The loaded model, held (not unloaded) until `_let_go`, and the time this request
        spent loading it; sets the model's keep-alive."""
        registry = self.state.registry
        known = registry.find(model)
        loads = known.loads if known is not None else 0
        handle = await registry.acquire(model)
        handle.leases += 1
        record.model = handle.id
        handle.keep_alive_s = (
            self.state.settings.keep_alive_s if keep_alive is proto.DEFAULT else keep_alive
        )
        return handle, handle.load_s if handle.loads != loads else 0.0

    def _let_go(self, handle: ModelHandle) -> Callable[[], Awaitable[None]]:
        """What ends a request's hold on `handle` (unloading it at once for keep_alive 0)."""
        released = False

        async def let_go() -> None:
            nonlocal released
            if released:
                return
            released = True
            handle.leases -= 1
            handle.touch()
            if handle.keep_alive_s == 0:
                await self.state.registry.unload(handle, reason="keep_alive 0")

        return let_go

    async def _grammar(self, fmt: Any) -> str | None:
        if fmt is None:
            return None
        if fmt == "json":
            from sovcli.engine.grammar import JSON_OBJECT_GBNF

            return JSON_OBJECT_GBNF
        return await self.grammars.grammar(fmt, "format")

    async def _generate(
        self, request: Request, req: proto.OllamaGeneration, *, chat: bool
    ) -> Response:
        """Hold the model, build the prompt, run, answer."""
        record = _record(request)
        record.stream = req.stream
        handle, load_s = await self._hold(req.model, req.keep_alive, record)
        let_go = self._let_go(handle)
        try:
            engine = handle.engine
            assert engine is not None
            self._check_ctx(request, engine)
            big = is_big(req.prompt) or any(is_big(m["content"]) for m in req.messages)
            render = _chat_prompt if chat else _generate_prompt
            prompt = await self.offload.run(render, engine, req, big=big)
            if self.state.audit_content:
                record.prompt = req.messages or req.prompt
            gen_request = await self._request(req, prompt, engine)
            stream, release = await submit(self.state, self.offload, handle, gen_request)
        except BaseException:
            await let_go()
            raise
        fmt = OllamaFormat(req.model, chat=chat, load_s=load_s)
        hold = HeldCall(req.tools, forced=False) if req.tools else None
        gen = Generation(handle, record, fmt, stream, release, let_go, hold)
        if req.stream:
            return _Streamed(gen, self.books)  # type: ignore[return-value]
        try:
            result = await collect(request, gen, self.books)
        finally:
            await gen.end()
        if result is None:
            return Response(status_code=499)
        problem = failure(result)
        if problem is not None:
            raise problem
        calls = parse_tool_calls(result.text, req.tools) if req.tools else None
        return JSONResponse(fmt.final(result, record.started, result.text, calls))

    def _check_ctx(self, request: Request, engine: EngineProtocol) -> None:
        """`options.num_ctx` above the loaded context is a 400 (the server's --ctx rules)."""
        wanted = getattr(request.state, "num_ctx", None)
        if wanted is not None and wanted > engine.info.n_ctx:
            raise bad_request(
                f"num_ctx {wanted} is above this server's context of {engine.info.n_ctx} "
                "tokens per sequence (start serve with a larger --ctx)",
                param="num_ctx",
            )

    async def _request(
        self, req: proto.OllamaGeneration, prompt: str, engine: EngineProtocol
    ) -> GenerationRequest:
        sampling = req.options.sampling
        grammar = await self._grammar(req.format)
        if grammar is not None:
            sampling = replace(sampling, grammar=grammar)
        gen = GenerationRequest(
            prompt=prompt,
            max_tokens=req.options.max_tokens,
            sampling=sampling,
            stop=req.options.stop,
            parse_special=not req.raw,
        )
        check_generation(gen, engine.info, "messages" if req.messages else "prompt")
        return gen

    # ---- generation endpoints ------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        """POST /api/chat"""
        chat = preset_parser(self.state.registry, proto.chat_body, "ollama-chat")
        req = await self._parsed(request, _noting(request, chat))
        if request.state.load_only:  # Ollama: an empty chat only loads (or unloads) the model
            return await self._load_only(request, req, chat=True)
        return await self._generate(request, req, chat=True)

    async def generate(self, request: Request) -> Response:
        """POST /api/generate"""
        generate = preset_parser(self.state.registry, proto.generate_body, "ollama-generate")
        req = await self._parsed(request, _noting(request, generate))
        if request.state.load_only:
            return await self._load_only(request, req, chat=False)
        return await self._generate(request, req, chat=False)

    async def _load_only(
        self, request: Request, req: proto.OllamaGeneration, *, chat: bool
    ) -> Response:
        """No prompt: load the model (keep_alive 0: unload it), answer one final object."""
        record = _record(request)
        registry = self.state.registry
        fmt = OllamaFormat(req.model, chat=chat)
        out = fmt.piece("")
        if req.keep_alive == 0:
            handle = registry.find(req.model)
            if handle is None:
                raise _not_found(req.model)
            record.model = handle.id
            status = await registry.stop(handle.id)
            out.update(done=True, done_reason="unload" if status != "not_loaded" else "stop")
            return JSONResponse(out)
        handle, _load_s = await self._hold(req.model, req.keep_alive, record)
        await self._let_go(handle)()
        out.update(done=True, done_reason="load")
        return JSONResponse(out)

    async def embed(self, request: Request) -> Response:
        """POST /api/embed"""
        req = await self._parsed(request, proto.embed_body)
        vectors, n_tokens, load_s = await self._embed(request, req)
        return JSONResponse(
            {
                "model": req.model,
                "embeddings": vectors,
                "total_duration": int((time.perf_counter() - _record(request).started) * 1e9),
                "load_duration": int(load_s * 1e9),
                "prompt_eval_count": n_tokens,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        """POST /api/embeddings (legacy: one `prompt`, one `embedding`)."""
        req = await self._parsed(request, _legacy_embed)
        vectors, _n, _load = await self._embed(request, req)
        return JSONResponse({"embedding": vectors[0]})

    async def _embed(
        self, request: Request, req: proto.OllamaEmbed
    ) -> tuple[list[list[float]], int, float]:
        record = _record(request)
        handle, load_s = await self._hold(req.model, req.keep_alive, record)
        let_go = self._let_go(handle)
        try:
            engine = handle.engine
            assert engine is not None
            vectors, n_tokens = await embed_texts(self, engine, req, record, _embedding_texts)
        finally:
            await let_go()
        record.prompt_tokens = n_tokens
        self.state.metrics.prompt_tokens.inc((handle.id,), n_tokens)
        return vectors, n_tokens, load_s

    # ---- models -------------------------------------------------------------------
    async def tags(self, request: Request) -> Response:
        """GET /api/tags: every model this server serves (loaded or not)."""
        handles = await asyncio.to_thread(lambda: self.state.registry.handles)
        return JSONResponse({"models": [tag_entry(h) for h in handles]})

    async def show(self, request: Request) -> Response:
        """POST /api/show"""
        body = parse_json_body(await request.body())
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("'model' is required", param="model")
        handle = self.state.registry.find(name)
        if handle is None:
            raise _not_found(name)
        meta = await asyncio.to_thread(_read_meta, handle.served.path)
        return JSONResponse(show_body(handle, meta))

    async def ps(self, request: Request) -> Response:
        """GET /api/ps: the models loaded now (and loading), with sovcli's detail."""
        parallel = self.state.settings.parallel
        entries = [
            ps_entry(h, parallel)
            for h in self.state.registry.handles
            if h.state in ("ready", "loading")
        ]
        return JSONResponse({"models": entries})

    async def version(self, request: Request) -> Response:
        """GET /api/version"""
        return JSONResponse({"version": __version__, "server": "sovcli"})

    async def stop(self, request: Request) -> Response:
        """POST /api/stop {"model": NAME}: unload now, or as soon as it is idle."""
        body = parse_json_body(await request.body())
        name = proto.model_name(body)
        handle = self.state.registry.find(name)
        if handle is None:
            raise _not_found(name)
        _record(request).model = handle.id
        status = await self.state.registry.stop(handle.id)
        return JSONResponse({"model": handle.id, "status": status})

    async def pull(self, request: Request) -> Response:
        """POST /api/pull: only with --allow-pull, through sovcli's pull and site policy."""
        from sovcli.server.ollama_pull import pull_body, run_pull

        body = parse_json_body(await request.body())
        if not self.state.settings.allow_pull:
            raise APIError(
                403,
                "pulling through the server is disabled: run `sovcli pull NAME` on the "
                "server, or start serve with --allow-pull",
                code="pull_disabled",
            )
        ref = pull_body(body)
        _record(request).model = ref
        async with self._pull_lock:
            status = await run_pull(ref)
        self.state.registry.rescan()
        return JSONResponse(status)


def _noting(request: Request, parse: Callable[[dict[str, Any], Limits], Parsed]):
    """`parse`, also noting on the request what the body itself says (before a created
    model's preset fills it in): `options.num_ctx` for `_check_ctx`, and whether it has no
    messages or prompt (a request that only loads or unloads the model)."""

    def parsed(body: dict[str, Any], limits: Limits) -> Parsed:
        request.state.num_ctx = proto.num_ctx(body)
        request.state.load_only = not body.get("messages") and not body.get("prompt")
        return parse(body, limits)

    return parsed


def _legacy_embed(body: dict[str, Any], limits: Limits) -> proto.OllamaEmbed:
    return proto.embed_body(body, limits, legacy=True)


def _not_found(name: str) -> APIError:
    return APIError(404, f"model '{name[:200]}' not found", code="model_not_found")


def _chat_prompt(engine: EngineProtocol, req: proto.OllamaGeneration) -> str:
    """The chat prompt (tools rendered by the template when it knows them, else described
    in the system message, as on the OpenAI route), or a 400 (runs in a worker)."""
    native = template_supports_tools(engine.info.chat_template)
    messages = prepare_messages(req.messages, req.tools, native)
    return _render(engine, messages, req.tools if native else None)


def _generate_prompt(engine: EngineProtocol, req: proto.OllamaGeneration) -> str:
    """`raw`: the prompt as given; else the prompt (and `system`) in the chat template."""
    if req.raw:
        return req.prompt
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": req.prompt})
    return _render(engine, messages)


def _render(
    engine: EngineProtocol,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> str:
    try:
        return engine.render_chat(messages, tools=tools)
    except APIError:
        raise
    except SovcliError as exc:
        raise bad_request(f"cannot format the messages: {exc.message}", "messages") from exc
    except Exception as exc:  # template errors (e.g. roles must alternate)
        raise bad_request(
            f"the model's chat template rejected the messages: {str(exc)[:300]}", "messages"
        ) from exc


def _embedding_texts(engine: EngineProtocol, req: proto.OllamaEmbed) -> tuple[list[str], int]:
    """The texts, cut to what an embedding takes when `truncate` (else a 400), and their
    token count (runs in a worker)."""
    limit = min(engine.info.n_ctx_train or EMBED_MAX_TOKENS, EMBED_MAX_TOKENS)
    texts, total = [], 0
    for index, text in enumerate(req.inputs):
        tokens = engine.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) > limit:
            if not req.truncate:
                raise bad_request(
                    f"input[{index}] has {len(tokens)} tokens; embeddings take at most {limit} "
                    '(or send "truncate": true)',
                    param="input",
                )
            tokens = tokens[: limit - 1]
            text = engine.detokenize(tokens)
        texts.append(text)
        total += len(tokens)
    return texts, total


def _read_meta(path: str) -> dict[str, Any] | None:
    from pathlib import Path

    from sovcli.store.ggufmeta import read_metadata

    try:
        return read_metadata([Path(path)])
    except Exception:
        return None


def ollama_routes(handlers: OllamaHandlers) -> list[Any]:
    """The Starlette routes of the Ollama API."""
    from starlette.routing import Route

    # Errors leave in OpenAI's shape, like every route's; `ollama_shape` (a middleware on
    # /api/ paths) turns them into Ollama's `{"error": "message"}`.
    def post(path: str, func: Endpoint) -> Route:
        return Route(path, api_endpoint(func), methods=["POST"])

    def get(path: str, func: Endpoint) -> Route:
        return Route(path, api_endpoint(func), methods=["GET"])

    return [
        post("/api/chat", handlers.chat),
        post("/api/generate", handlers.generate),
        post("/api/embed", handlers.embed),
        post("/api/embeddings", handlers.embeddings),
        get("/api/tags", handlers.tags),
        post("/api/show", handlers.show),
        get("/api/ps", handlers.ps),
        get("/api/version", handlers.version),
        post("/api/pull", handlers.pull),
        post("/api/stop", handlers.stop),
    ]
