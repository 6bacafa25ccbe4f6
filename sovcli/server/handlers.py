"""The OpenAI endpoints: chat and text completions (streamed or not), embeddings, models.

A generation request is validated, routed to its model's engine, admitted if the queue has
room, submitted, then either collected (watching for a client that leaves) or streamed as
server-sent events. Whatever happens, the engine sequence is released when the request ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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
    from_sovcli_error,
    internal_error,
    overloaded,
)
from sovcli.server.gate import RequestRecord, log_exception
from sovcli.server.grammars import GrammarCache
from sovcli.server.jsonbody import parse_json_body
from sovcli.server.offload import Offloader, is_big
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
from sovcli.server.responses import DONE, ChatFormat, CompletionFormat
from sovcli.server.settings import Limits
from sovcli.server.state import ServerState
from sovcli.server.tools import (
    HeldCall,
    forced_call_schema,
    parse_tool_calls,
    prepare_messages,
    template_supports_tools,
)

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


def api_endpoint(func: Endpoint) -> Endpoint:
    """Turn every failure of a handler into an OpenAI error (500s say nothing internal)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await func(request)
        except APIError as err:
            return error_response(err)
        except SovcliError as exc:
            return error_response(from_sovcli_error(exc))
        except Exception as exc:
            log_exception(f"{request.method} {request.url.path}", exc)
            return error_response(internal_error())

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


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
    def _admit(self, handle: ModelHandle) -> Callable[[], None]:
        """Take a place for a generation, or raise a 503 when the queue is full."""
        limits = self.state.settings.limits
        assert handle.engine is not None
        stats = handle.engine.stats()
        capacity = stats.n_parallel + limits.max_queue
        backlog = stats.queued_requests > 0 and stats.queued_requests >= limits.max_queue
        if backlog or handle.in_flight >= capacity:
            raise overloaded(limits.retry_after_s, "the request queue is full, retry later")
        handle.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                handle.in_flight -= 1

        return release

    async def _submit(
        self,
        gen: GenerationRequest,
        handle: ModelHandle,
        record: RequestRecord,
        fmt: ChatFormat | CompletionFormat,
        options: GenerationOptions,
        hold: HeldCall | None = None,
    ) -> _Run:
        """Admit `gen` (or raise a 503) and hand it to the model's engine, which tokenizes
        it in a worker thread (never on the event loop)."""
        release = self._admit(handle)
        try:
            assert handle.engine is not None
            stream = await self.offload.run(
                _submit_checked, handle.engine, gen, big=is_big(gen.prompt), orphan=_cancel_stream
            )
        except BaseException:
            release()
            raise
        return _Run(handle, record, fmt, options, stream, release, hold)

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
        return await self.grammars.grammar(fmt["schema"], "response_format")

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
        if not is_big(raw):
            return parse(parse_json_body(raw), limits)
        return await self.offload.run(lambda: parse(parse_json_body(raw), limits), big=True)

    async def _routed(
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
        record = _record(request)
        chat, handle, engine = await self._routed(request, chat_request)
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
        fmt = ChatFormat(chat.options.model or handle.id, chat.options.logprobs_top)
        grammar = await self._chat_grammar(chat, tools_active)
        gen = self._generation(prompt, chat.options, grammar, fmt.id)
        hold = HeldCall(tools, forced=chat.tool_choice != "auto") if tools else None
        run = await self._submit(gen, handle, record, fmt, chat.options, hold)
        result = await self._respond(request, run)
        if not isinstance(result, GenerationResult):
            return result
        text = result.text
        calls = parse_tool_calls(text, tools) if tools else None
        finish = "tool_calls" if calls else self._finish_reason(result)
        record.finish_reason = finish
        return JSONResponse(
            fmt.body(
                result, content=None if calls else text, finish_reason=finish, tool_calls=calls
            )
        )

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions"""
        record = _record(request)
        req, handle, engine = await self._routed(request, completion_request)
        if self.state.audit_content:
            record.prompt = req.prompt
        fmt = CompletionFormat(req.options.model or handle.id, req.options.logprobs_top)
        gen = self._generation(req.prompt, req.options, None, fmt.id)
        run = await self._submit(gen, handle, record, fmt, req.options)
        if req.echo:
            fmt.echo = req.prompt if isinstance(req.prompt, str) else engine.detokenize(req.prompt)
        result = await self._respond(request, run)
        if not isinstance(result, GenerationResult):
            return result
        record.finish_reason = self._finish_reason(result)
        return JSONResponse(fmt.body(result, finish_reason=record.finish_reason))

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings"""
        record = _record(request)
        req = await self._parsed(request, embedding_request)
        handle = self.state.registry.resolve(req.model)
        engine = handle.engine
        assert engine is not None
        record.model = handle.id
        if req.dimensions is not None and req.dimensions != engine.info.n_embd:
            raise bad_request(
                f"this model's embeddings have {engine.info.n_embd} dimensions",
                param="dimensions",
            )
        big = sum(len(t) for t in req.inputs) >= 65536
        texts, n_tokens = await self.offload.run(_embedding_texts, engine, req, big=big)
        if self.state.audit_content:
            record.prompt = texts
        vectors = await asyncio.to_thread(engine.embed, texts)
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
            self.state.metrics.render(samples),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    # ---- generation plumbing ------------------------------------------------------------
    @staticmethod
    def _finish_reason(result: GenerationResult) -> str:
        if result.finish_reason == "error":
            if result.error and result.error.startswith(GRAMMAR_FAILURE):
                raise bad_request(result.error, param="response_format")
            raise internal_error()
        if result.finish_reason == "cancelled":
            raise overloaded(1, "the request was cancelled (server shutting down)")
        return result.finish_reason

    def _account(self, run: _Run, result: GenerationResult) -> None:
        """Count a finished generation in the record and the metrics."""
        record = run.record
        record.prompt_tokens = result.prompt_tokens
        self.state.metrics.prompt_tokens.inc((run.handle.id,), result.prompt_tokens)
        self._account_generated(run, result.completion_tokens)
        if self.state.audit_content:
            record.completion = result.text

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

    async def _respond(self, request: Request, run: _Run) -> GenerationResult | Response:
        """The SSE response of a streamed request (returned at once), else the whole result
        (or a 499 response when the client left first)."""
        if run.options.stream:

            def on_disconnect() -> None:
                run.record.disconnected = True
                run.stream.cancel()

            return SSEResponse(self._events(run), on_disconnect)  # type: ignore[return-value]
        try:
            result = await self._collect(request, run)
        finally:
            run.release()
        return Response(status_code=499) if result is None else result

    async def _collect(self, request: Request, run: _Run) -> GenerationResult | None:
        """Wait for the whole result; None (sequence cancelled) if the client leaves first."""
        stream, record = run.stream, run.record

        async def consume() -> None:
            async for event in stream:
                _note_first_token(record, event)
                if event.finish_reason is not None:
                    break

        async def client_gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        consumer = asyncio.ensure_future(consume())
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        finally:
            watcher.cancel()
        if not consumer.done():
            record.disconnected, record.status = True, 499
            stream.cancel()
            consumer.cancel()
            return None
        consumer.result()
        result = await self._result(stream)
        self._account(run, result)
        return result

    async def _events(self, run: _Run) -> AsyncIterator[bytes]:
        """The server-sent events of a chat or text completion. The sequence is cancelled and
        the queue place released however the stream ends."""
        fmt, hold, record = run.fmt, run.hold, run.record
        finished = False
        seen = 0
        try:
            for chunk in fmt.opening():
                yield chunk
            async for event in run.stream:
                seen += len(event.token_ids)
                _note_first_token(record, event)
                if event.text:
                    if hold is not None and hold.holding:
                        released = hold.feed(event.text)
                        if released:
                            yield fmt.text_chunk(released)
                    else:
                        yield fmt.text_chunk(event.text, event.logprobs)
                if event.finish_reason is not None:
                    break
            result = await self._result(run.stream)
            finished = True
            self._account(run, result)
            record.finish_reason = finish = result.finish_reason
            if finish in STREAM_FAILURES:
                failure = STREAM_FAILURES[finish]
                if result.error and result.error.startswith(GRAMMAR_FAILURE):
                    failure = result.error
                yield _sse_error(failure)
                yield DONE
                return
            if hold is not None:
                held, calls = hold.finish()
                if calls:
                    assert isinstance(fmt, ChatFormat)
                    yield fmt.tool_calls_chunk(calls)
                    record.finish_reason = finish = "tool_calls"
                elif held:
                    yield fmt.text_chunk(held)
            yield fmt.finish_chunk(finish)
            if run.options.include_usage:
                yield fmt.usage_chunk(result)
            yield DONE
        finally:
            if not finished:
                run.stream.cancel()
                self._account_generated(run, seen)
            run.release()


@dataclass
class _Run:
    """One admitted generation: its model, request record, output format, options and engine
    stream; `release` gives its queue place back; `hold` keeps back text that may be a call."""

    handle: ModelHandle
    record: RequestRecord
    fmt: ChatFormat | CompletionFormat
    options: GenerationOptions
    stream: GenerationStream
    release: Callable[[], None]
    hold: HeldCall | None = None


def _submit_checked(engine: EngineProtocol, gen: GenerationRequest) -> GenerationStream:
    """`engine.submit(gen)`, but a text prompt whose beginning alone overflows the context is
    refused without tokenizing the rest (a 3.9 MB prompt: 16 KB tokenized, not 1.5 s of CPU).
    Only the last word before the cut can tokenize differently in the whole text, so the
    whole has about as many tokens as its beginning, or more; a margin covers the rest.
    """
    prompt, n_ctx = gen.prompt, engine.info.n_ctx
    head_chars = HEAD_CHARS_PER_TOKEN * n_ctx
    if isinstance(prompt, str) and len(prompt) > head_chars:
        head = engine.tokenize(
            prompt[:head_chars], add_special=False, parse_special=gen.parse_special
        )
        if len(head) > n_ctx + HEAD_MARGIN_TOKENS:
            raise ContextOverflowError(
                f"the prompt has more than {n_ctx} tokens (its first {head_chars} characters "
                f"alone have {len(head)}) but the context holds {n_ctx}"
            )
    return engine.submit(gen)


def _cancel_stream(stream: GenerationStream) -> None:
    """Cancel a stream nobody will read (its request was cancelled while it was submitted)."""
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


def _embedding_texts(engine: EngineProtocol, req: EmbeddingRequest) -> tuple[list[str], int]:
    """The texts of the inputs and their token count (runs in a worker). Token ids outside
    the vocabulary are a 400 (the engine refuses them: llama.cpp would abort the process)."""
    texts = []
    for index, item in enumerate(req.inputs):
        try:
            texts.append(item if isinstance(item, str) else engine.detokenize(item))
        except UsageError as exc:
            raise bad_request(f"input[{index}]: {exc.message}", param="input") from exc
    n_tokens = sum(len(t) if isinstance(t, list) else len(engine.tokenize(t)) for t in req.inputs)
    return texts, n_tokens


def _note_first_token(record: RequestRecord, event: TokenEvent) -> None:
    """Stamp the time to the first generated token."""
    if record.ttft_s is None and (event.text or event.token_ids):
        record.ttft_s = time.perf_counter() - record.started


def _sse_error(message: str) -> bytes:
    body = internal_error().body()
    body["error"]["message"] = message
    return b"data: " + json.dumps(body).encode() + b"\n\n"
