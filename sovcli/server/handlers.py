"""The OpenAI endpoints: chat and text completions (streamed or not), embeddings, models.

A generation request is validated, routed to its model's engine, admitted if the queue has
room, submitted, then either collected (watching for a client that leaves) or streamed as
server-sent events. Whatever happens, the engine sequence is released when the request ends.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sovcli.engine.types import (
    EngineProtocol,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    TokenEvent,
)
from sovcli.errors import ContextOverflowError, SovcliError, UsageError
from sovcli.server.errors import (
    APIError,
    bad_request,
    context_overflow,
    from_sovcli_error,
    internal_error,
    overloaded,
)
from sovcli.server.gate import RequestRecord, log_exception
from sovcli.server.grammars import GrammarCache
from sovcli.server.jsonbody import parse_json_body
from sovcli.server.offload import Offloader, is_big
from sovcli.server.presets import PARSER_DIALECTS, preset_parser
from sovcli.server.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationOptions,
    chat_request,
    completion_request,
    embedding_request,
)
from sovcli.server.registry import ModelHandle
from sovcli.server.responses import ChatFormat, Choice, CompletionFormat
from sovcli.server.settings import Limits
from sovcli.server.state import ServerState
from sovcli.server.tools import (
    HeldCall,
    forced_call_schema,
    parse_tool_calls,
    prepare_messages,
    template_supports_tools,
)
from sovcli.server.validate import check_generation, vocabulary_ids

Endpoint = Callable[[Request], Awaitable[Response]]
RESULT_TIMEOUT_S = 60.0
Parsed = TypeVar("Parsed", ChatRequest, CompletionRequest)
# The last event of a stream that ends badly (a request not streamed gets a 500 or a 503).
STREAM_FAILURES = {"error": "generation failed", "cancelled": "the request was cancelled"}
HEAD_CHARS_PER_TOKEN = 16  # how much of a long prompt is tokenized first (x context)
HEAD_MARGIN_TOKENS = 64
GRAMMAR_FAILURE = "the grammar"  # how the engine's message starts when llama.cpp refused one


def error_response(err: APIError) -> Response:
    """An OpenAI-shaped error response."""
    return Response(
        err.body_bytes(), status_code=err.status, headers=err.headers, media_type="application/json"
    )


def api_endpoint(
    func: Endpoint, render: Callable[[APIError], Response] = error_response
) -> Endpoint:
    """Turn every failure of a handler into an error response (500s say nothing internal),
    in OpenAI's shape unless `render` gives another (e.g. Ollama's)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await func(request)
        except APIError as err:
            return render(err)
        except SovcliError as exc:
            return render(from_sovcli_error(exc))
        except Exception as exc:
            log_exception(f"{request.method} {request.url.path}", exc)
            return render(internal_error())

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def openai_routes(handlers: Handlers, responses: Any) -> list[Route]:
    """The OpenAI endpoints, each under `/v1` and without it (clients configured with a
    bare base URL call `/chat/completions`). `responses` serves `/v1/responses`."""
    table: list[tuple[str, Endpoint, str]] = [
        ("/chat/completions", handlers.chat_completions, "POST"),
        ("/completions", handlers.completions, "POST"),
        ("/embeddings", handlers.embeddings, "POST"),
        ("/responses", responses.create, "POST"),
        ("/models", handlers.list_models, "GET"),
        ("/models/{model:path}", handlers.get_model, "GET"),
    ]
    return [
        Route(prefix + path, api_endpoint(func), methods=[method])
        for prefix in ("/v1", "")
        for path, func, method in table
    ]


def _record(request: Request) -> RequestRecord:
    return request.scope["state"]["record"]


class SSEResponse:
    """Streams server-sent events; a client that leaves cancels its engine sequence at once."""

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None]) -> None:
        self.events = events
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    self.on_disconnect()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in self.events:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.on_disconnect()
        finally:
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]


class Handlers:
    """The endpoint functions of one app (they share its `ServerState`)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.grammars = GrammarCache(state.settings.limits.grammar_cache_bytes)
        self.offload = Offloader()

    def close(self) -> None:
        """Stop the worker threads (running calls finish)."""
        self.offload.close()

    # ---- admission -------------------------------------------------------------------
    def _admit(self, handle: ModelHandle, count: int = 1) -> Callable[[], None]:
        """Take `count` places for a generation (its choices), or raise a 503 when the
        queue is full."""
        limits = self.state.settings.limits
        assert handle.engine is not None
        stats = handle.engine.stats()
        capacity = stats.n_parallel + limits.max_queue
        backlog = stats.queued_requests > 0 and stats.queued_requests >= limits.max_queue
        if backlog or handle.in_flight + count > capacity:
            raise overloaded(limits.retry_after_s, "the request queue is full, retry later")
        handle.in_flight += count
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                handle.in_flight -= count

        return release

    async def _submit(
        self,
        gen: GenerationRequest,
        handle: ModelHandle,
        record: RequestRecord,
        fmt: Any,
        options: GenerationOptions,
        *,
        param: str,
        tools: list[dict[str, Any]] | None = None,
        forced: bool = False,
    ) -> _Run:
        """Check `gen` (the validation layer's last stage), admit its `options.n` copies (or
        raise a 503) and hand them to the model's engine, which tokenizes in a worker thread
        (never on the event loop). The copies are decoded as parallel sequences."""
        assert handle.engine is not None
        engine = handle.engine
        check_generation(gen, engine.info, param)
        gens = [gen] + [_copy(gen, i) for i in range(1, options.n)]
        release = self._admit(handle, len(gens))
        try:
            streams = await self.offload.run(
                _submit_checked, engine, gens, param, big=is_big(gen.prompt), orphan=_cancel_all
            )
        except BaseException:
            release()
            raise
        holds = [HeldCall(tools, forced) for _ in streams] if tools else None
        return _Run(handle, record, fmt, options, streams, release, holds)

    async def _chat_grammar(self, chat: ChatRequest, tools_active: bool) -> str | None:
        if tools_active and chat.tools:
            schema = forced_call_schema(chat.tools, chat.tool_choice)
            if schema is not None:
                return await self.grammars.grammar(schema, "tools")
        fmt = chat.response_format
        if fmt is None:
            return None
        if fmt["type"] == "json_object":
            from sovcli.engine.grammar import JSON_OBJECT_GBNF

            return JSON_OBJECT_GBNF
        return await self.grammars.grammar(fmt["schema"], chat.format_param)

    @staticmethod
    def _generation(
        prompt: str | list[int], options: GenerationOptions, grammar: str | None, rid: str
    ) -> GenerationRequest:
        sampling = options.sampling
        if grammar is not None:
            sampling = replace(sampling, grammar=grammar)
        if options.logprobs:
            sampling = replace(sampling, logprobs=max(options.top_logprobs, 1))
        return GenerationRequest(
            prompt=prompt,
            max_tokens=options.max_tokens,
            sampling=sampling,
            stop=options.stop,
            request_id=rid,
        )

    async def _parsed(
        self, request: Request, parse: Callable[[dict[str, Any], Limits], Parsed]
    ) -> Parsed:
        """The body checked and parsed by `parse` (in a worker thread when it is big)."""
        raw = await request.body()
        limits = self.state.settings.limits
        dialect = PARSER_DIALECTS.get(getattr(parse, "__name__", ""))
        if dialect:  # a created model's preset fills in what the request leaves out
            parse = preset_parser(self.state.registry, parse, dialect)
        if not is_big(raw):
            return parse(parse_json_body(raw), limits)
        return await self.offload.run(lambda: parse(parse_json_body(raw), limits), big=True)

    async def routed(
        self, request: Request, parse: Callable[[dict[str, Any], Limits], Parsed]
    ) -> tuple[Parsed, ModelHandle, EngineProtocol]:
        """The body parsed by `parse`, the model it names and its engine (noted in the record)."""
        parsed = await self._parsed(request, parse)
        handle = self.state.registry.resolve(parsed.options.model)
        assert handle.engine is not None
        record = _record(request)
        record.model, record.stream = handle.id, parsed.options.stream
        return parsed, handle, handle.engine

    # ---- endpoints ---------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions"""
        chat, handle, engine = await self.routed(request, chat_request)
        options = chat.options
        fmt = ChatFormat(options.model or handle.id, options.logprobs_top, options.n)
        return await self.run_chat(request, chat, handle, engine, fmt)

    async def run_chat(
        self,
        request: Request,
        chat: ChatRequest,
        handle: ModelHandle,
        engine: EngineProtocol,
        fmt: Any,
    ) -> Response:
        """Render `chat`, generate and answer in `fmt` (chat completions or the Responses API):
        an SSE stream, or the whole body with one `Choice` per choice."""
        record = _record(request)
        tools_active = bool(chat.tools) and chat.tool_choice != "none"
        tools = chat.tools if tools_active else None
        native = template_supports_tools(engine.info.chat_template)
        messages = prepare_messages(chat.messages, tools, native)
        big = any(is_big(m.get("content") or "") for m in messages)
        prompt = await self.offload.run(
            _render, engine, messages, tools if native else None, big=big
        )
        if self.state.audit_content:
            record.prompt = chat.messages
        grammar = await self._chat_grammar(chat, tools_active)
        gen = self._generation(prompt, chat.options, grammar, fmt.id)
        forced = chat.tool_choice != "auto"
        run = await self._submit(
            gen,
            handle,
            record,
            fmt,
            chat.options,
            param=chat.prompt_param,
            tools=tools,
            forced=forced,
        )
        results = await self._respond(request, run)
        if not isinstance(results, list):
            return results
        choices = []
        for result in results:
            calls = parse_tool_calls(result.text, tools) if tools else None
            finish = "tool_calls" if calls else self._finish_reason(result, chat.format_param)
            choices.append(Choice(result, None if calls else result.text, finish, calls))
        record.finish_reason = choices[0].finish_reason
        return JSONResponse(fmt.body(choices))

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions"""
        record = _record(request)
        req, handle, engine = await self.routed(request, completion_request)
        if self.state.audit_content:
            record.prompt = req.prompt
        options = req.options
        fmt = CompletionFormat(options.model or handle.id, options.logprobs_top, options.n)
        gen = self._generation(req.prompt, options, None, fmt.id)
        run = await self._submit(gen, handle, record, fmt, options, param="prompt")
        if req.echo:
            fmt.echo = req.prompt if isinstance(req.prompt, str) else engine.detokenize(req.prompt)
        results = await self._respond(request, run)
        if not isinstance(results, list):
            return results
        choices = [Choice(r, r.text, self._finish_reason(r, "prompt")) for r in results]
        record.finish_reason = choices[0].finish_reason
        return JSONResponse(fmt.body(choices))

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings"""
        record = _record(request)
        req = await self._parsed(request, embedding_request)
        handle = self.state.registry.resolve(req.model)
        engine = handle.engine
        assert engine is not None
        record.model = handle.id
        vectors, n_tokens = await self.embed_inputs(engine, req, record)
        record.prompt_tokens = n_tokens
        self.state.metrics.prompt_tokens.inc((handle.id,), n_tokens)
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any = vector
            if req.encoding_format == "base64":
                embedding = base64.b64encode(array("f", vector).tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": req.model or handle.id,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    async def embed_inputs(
        self, engine: EngineProtocol, req: Any, record: RequestRecord
    ) -> tuple[list[list[float]], int]:
        """The vectors of `req.inputs` (texts or token ids, checked against the vocabulary)
        and their token count; `req.dimensions` must be the model's. Shared by the OpenAI
        and Ollama embedding routes."""
        try:
            return await embed_texts(self, engine, req, record, _embedding_texts)
        except ContextOverflowError as exc:
            raise bad_request(exc.message, param="input", code="context_length_exceeded") from exc

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models"""
        return JSONResponse(
            {"object": "list", "data": [self._model_card(h) for h in self.state.registry.handles]}
        )

    async def get_model(self, request: Request) -> Response:
        """GET /v1/models/{model}"""
        model_id = request.path_params["model"]
        for handle in self.state.registry.handles:
            if model_id in handle.ids():
                return JSONResponse(self._model_card(handle))
        raise APIError(
            404, f"the model '{model_id}' is not served here", param="model", code="model_not_found"
        )

    @staticmethod
    def _model_card(handle: ModelHandle) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": handle.id,
            "object": "model",
            "created": handle.created,
            "owned_by": "sovcli",
            "aliases": list(handle.served.aliases),
            "status": handle.state,
        }
        if handle.engine is not None:
            info = handle.engine.info
            card["meta"] = {
                "architecture": info.architecture,
                "n_params": info.n_params,
                "n_ctx": info.n_ctx,
                "n_ctx_train": info.n_ctx_train,
                "n_embd": info.n_embd,
            }
        return card

    async def health(self, request: Request) -> Response:
        """GET /health: 200 when every model is loaded, 503 while loading."""
        registry = self.state.registry
        status = registry.status()
        body = {
            "status": status,
            "models": [{"id": h.id, "status": h.state} for h in registry.handles],
        }
        headers = {} if status == "ready" else {"Retry-After": "1"}
        return JSONResponse(body, status_code=200 if status == "ready" else 503, headers=headers)

    async def metrics(self, request: Request) -> Response:
        """GET /metrics (Prometheus text format)."""
        samples = []
        for handle in self.state.registry.handles:
            engine = handle.engine
            if engine is None:
                samples.append((handle.id, 0, 0, self.state.settings.parallel))
                continue
            stats = engine.stats()
            samples.append(
                (handle.id, stats.active_sequences, stats.queued_requests, stats.n_parallel)
            )
        return Response(
            self.state.metrics.render(samples, self.state.registry.draft_totals()),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    # ---- generation plumbing ------------------------------------------------------------
    @staticmethod
    def _finish_reason(result: GenerationResult, grammar_param: str) -> str:
        if result.finish_reason == "error":
            if result.error and result.error.startswith(GRAMMAR_FAILURE):
                raise bad_request(result.error, param=grammar_param)
            raise internal_error()
        if result.finish_reason == "cancelled":
            raise overloaded(1, "the request was cancelled (server shutting down)")
        return result.finish_reason

    def _account(self, run: _Run, results: list[GenerationResult]) -> None:
        """Count finished generations in the record and the metrics (the prompt once)."""
        record = run.record
        record.prompt_tokens = results[0].prompt_tokens
        self.state.metrics.prompt_tokens.inc((run.handle.id,), results[0].prompt_tokens)
        self._account_generated(run, sum(r.completion_tokens for r in results))
        if self.state.audit_content:
            record.completion = results[0].text if len(results) == 1 else [r.text for r in results]

    def _account_generated(self, run: _Run, generated: int) -> None:
        """Count generated tokens and the time to the first (all a stream cut short has)."""
        run.record.completion_tokens = generated
        self.state.metrics.generated_tokens.inc((run.handle.id,), generated)
        if run.record.ttft_s is not None:
            self.state.metrics.ttft.observe((run.handle.id,), run.record.ttft_s)

    async def _result(self, stream: GenerationStream) -> GenerationResult:
        """The result once the final event has been read (normally ready at once)."""
        try:
            return stream.result(0)
        except TimeoutError:
            return await asyncio.to_thread(stream.result, RESULT_TIMEOUT_S)

    async def _respond(self, request: Request, run: _Run) -> list[GenerationResult] | Response:
        """The SSE response of a streamed request (returned at once), else every choice's
        result (or a 499 response when the client left first)."""
        if run.options.stream:

            def on_disconnect() -> None:
                run.record.disconnected = True
                run.cancel()

            return SSEResponse(self._events(run), on_disconnect)  # type: ignore[return-value]
        try:
            results = await self._collect(request, run)
        finally:
            run.release()
        return Response(status_code=499) if results is None else results

    async def _collect(self, request: Request, run: _Run) -> list[GenerationResult] | None:
        """Wait for every choice; None (sequences cancelled) if the client leaves first."""
        record = run.record

        async def consume(stream: GenerationStream) -> None:
            async for event in stream:
                _note_first_token(record, event)
                if event.finish_reason is not None:
                    break

        async def client_gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        consumers = [asyncio.ensure_future(consume(stream)) for stream in run.streams]
        everything = asyncio.gather(*consumers)
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({everything, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            run.cancel()
            raise
        finally:
            watcher.cancel()
        if not everything.done():
            record.disconnected, record.status = True, 499
            run.cancel()
            everything.cancel()
            return None
        everything.result()
        results = [await self._result(stream) for stream in run.streams]
        self._account(run, results)
        return results

    async def _events(self, run: _Run) -> AsyncIterator[bytes]:
        """The server-sent events of a chat or text completion (or a Responses stream). The
        sequences are cancelled and the queue places released however the stream ends."""
        fmt, holds, record = run.fmt, run.holds, run.record
        finished = False
        try:
            for chunk in fmt.opening():
                yield chunk
            if len(run.streams) == 1:  # the common case, read directly: no extra hop per token
                async for event in run.streams[0]:
                    chunk = run.delta(0, event)
                    if chunk:
                        yield chunk
                    if event.finish_reason is not None:
                        break
            else:
                async for index, event in _merged(run.streams):
                    chunk = run.delta(index, event)
                    if chunk:
                        yield chunk
            results = [await self._result(stream) for stream in run.streams]
            finished = True
            self._account(run, results)
            finishes = [r.finish_reason for r in results]
            record.finish_reason = finishes[0]
            failed = next((r for r in results if r.finish_reason in STREAM_FAILURES), None)
            if failed is not None:
                failure = STREAM_FAILURES[failed.finish_reason]
                if failed.error and failed.error.startswith(GRAMMAR_FAILURE):
                    failure = failed.error
                for chunk in fmt.failure(failure):
                    yield chunk
                return
            for index, hold in enumerate(holds or []):
                held, calls = hold.finish()
                if calls:
                    yield fmt.tool_calls_chunk(calls, index)
                    finishes[index] = "tool_calls"
                elif held:
                    yield fmt.text_chunk(held, (), index)
            record.finish_reason = finishes[0]
            for chunk in fmt.closing(finishes, results, run.options.include_usage):
                yield chunk
        finally:
            if not finished:
                run.cancel()
                self._account_generated(run, run.seen)
            run.release()


@dataclass
class _Run:
    """One admitted generation: its model, request record, output format, options and the
    engine streams of its choices; `release` gives its queue places back; `holds` (one per
    choice) keep back text that may be a tool call."""

    handle: ModelHandle
    record: RequestRecord
    fmt: Any
    options: GenerationOptions
    streams: list[GenerationStream]
    release: Callable[[], None]
    holds: list[HeldCall] | None = None
    seen: int = 0  # tokens streamed so far (all a stream cut short can account)

    def delta(self, index: int, event: TokenEvent) -> bytes | None:
        """The chunk a token event of choice `index` gives (None while held or empty)."""
        self.seen += len(event.token_ids)
        _note_first_token(self.record, event)
        if not event.text:
            return None
        hold = self.holds[index] if self.holds is not None else None
        if hold is not None and hold.holding:
            released = hold.feed(event.text)
            return self.fmt.text_chunk(released, (), index) if released else None
        return self.fmt.text_chunk(event.text, event.logprobs, index)

    def cancel(self) -> None:
        """Cancel every choice's sequence."""
        _cancel_all(self.streams)


async def _merged(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """The events of several streams as they come, each with its stream's index, up to
    each stream's final event."""
    queue: asyncio.Queue[tuple[int, TokenEvent | None]] = asyncio.Queue()

    async def pump(index: int, stream: GenerationStream) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
                if event.finish_reason is not None:
                    break
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, event = await queue.get()
            if event is None:
                open_streams -= 1
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _submit_checked(
    engine: EngineProtocol, gens: list[GenerationRequest], param: str
) -> list[GenerationStream]:
    """Submit `gens` (copies of one prompt) together, or raise OpenAI's context overflow
    error naming `param`. A text prompt whose beginning alone overflows the context is
    refused without tokenizing the rest (a 3.9 MB prompt: 16 KB tokenized, not 1.5 s of
    CPU). Only the last word before the cut can tokenize differently in the whole text, so
    the whole has about as many tokens as its beginning, or more; a margin covers the rest.
    """
    gen = gens[0]
    prompt, n_ctx = gen.prompt, engine.info.n_ctx
    head_chars = HEAD_CHARS_PER_TOKEN * n_ctx
    if isinstance(prompt, str) and len(prompt) > head_chars:
        head = engine.tokenize(
            prompt[:head_chars], add_special=False, parse_special=gen.parse_special
        )
        if len(head) > n_ctx + HEAD_MARGIN_TOKENS:
            raise context_overflow(n_ctx, len(head), param, head_chars=head_chars)
    try:
        submit_many = getattr(engine, "submit_many", None)
        if submit_many is not None and len(gens) > 1:
            return list(submit_many(gens))
        streams: list[GenerationStream] = []
        try:
            for one in gens:
                streams.append(engine.submit(one))
        except BaseException:
            _cancel_all(streams)
            raise
        return streams
    except ContextOverflowError as exc:
        n_tokens = (
            len(engine.tokenize(prompt, add_special=True, parse_special=gen.parse_special))
            if isinstance(prompt, str)
            else len(prompt)
        )
        raise context_overflow(n_ctx, n_tokens, param) from exc


def _copy(gen: GenerationRequest, index: int) -> GenerationRequest:
    """Choice `index` of `n`: the same request with its own seed, so sampled choices differ
    (a request's fixed seed still gives the same `n` choices every time)."""
    seed = gen.sampling.seed if gen.sampling.seed is not None else secrets.randbits(32)
    sampling = replace(gen.sampling, seed=(seed + index) & 0xFFFFFFFF)
    return replace(gen, sampling=sampling, request_id=f"{gen.request_id}-{index}")


def _cancel_all(streams: list[GenerationStream]) -> None:
    """Cancel streams nobody will read (their request was cancelled or failed)."""
    for stream in streams:
        stream.cancel()


def _render(
    engine: EngineProtocol, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> str:
    """The chat prompt, or a 400 naming what the template refused (runs in a worker)."""
    try:
        return engine.render_chat(messages, tools=tools)
    except SovcliError as exc:
        raise bad_request(f"cannot format the messages: {exc.message}", "messages") from exc
    except Exception as exc:  # template errors (e.g. roles must alternate)
        raise bad_request(
            f"the model's chat template rejected the messages: {str(exc)[:300]}", "messages"
        ) from exc


async def embed_texts(
    handlers: Any, engine: EngineProtocol, req: Any, record: RequestRecord, texts_of: Any
) -> tuple[list[list[float]], int]:
    """The vectors of `req.inputs` and their token count, for the OpenAI and Ollama routes:
    `req.dimensions` must be the model's; `texts_of(engine, req)` -> (texts, token count) runs
    in a worker (`handlers.offload`); the texts go in the audit record when content is kept."""
    if req.dimensions is not None and req.dimensions != engine.info.n_embd:
        raise bad_request(
            f"this model's embeddings have {engine.info.n_embd} dimensions", param="dimensions"
        )
    big = sum(len(t) for t in req.inputs) >= 65536
    texts, n_tokens = await handlers.offload.run(texts_of, engine, req, big=big)
    if handlers.state.audit_content:
        record.prompt = texts
    return await asyncio.to_thread(engine.embed, texts), n_tokens


def _embedding_texts(engine: EngineProtocol, req: EmbeddingRequest) -> tuple[list[str], int]:
    """The texts of the inputs and their token count (runs in a worker). Token ids outside
    the vocabulary are a 400 (llama.cpp would abort the process)."""
    texts = []
    for index, item in enumerate(req.inputs):
        if isinstance(item, str):
            texts.append(item)
            continue
        vocabulary_ids(item, engine.info.n_vocab, "input")
        try:
            texts.append(engine.detokenize(item))
        except UsageError as exc:
            raise bad_request(f"input[{index}]: {exc.message}", param="input") from exc
    n_tokens = sum(len(t) if isinstance(t, list) else len(engine.tokenize(t)) for t in req.inputs)
    return texts, n_tokens


def _note_first_token(record: RequestRecord, event: TokenEvent) -> None:
    """Stamp the time to the first generated token."""
    if record.ttft_s is None and (event.text or event.token_ids):
        record.ttft_s = time.perf_counter() - record.started
