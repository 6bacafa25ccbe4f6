"""One Ollama generation, from admission to its last NDJSON line.

A generation takes a place in its model's queue (503 when full, as on the OpenAI routes),
is submitted to the engine in a worker thread, then is either collected (watching for a
client that leaves, which cancels the sequence) or streamed. Streams are written as
server-sent events ending with `[DONE]`, which `ollama_shape` turns into NDJSON; the gate
writes the audit record before that end. Whatever happens, the queue place is given back
and `on_end` runs (the model's lease released, and with `keep_alive: 0` the model unloaded).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from sovcli.engine.types import GenerationRequest, GenerationResult, GenerationStream
from sovcli.server.errors import APIError, bad_request, internal_error, overloaded
from sovcli.server.gate import RequestRecord
from sovcli.server.offload import Offloader, is_big
from sovcli.server.ollama_models import iso_time
from sovcli.server.registry import ModelHandle
from sovcli.server.responses import DONE, sse
from sovcli.server.state import ServerState
from sovcli.server.tools import HeldCall

RESULT_TIMEOUT_S = 60.0
GRAMMAR_FAILURE = "the grammar"  # how the engine's message starts when llama.cpp refused one
NS = 1_000_000_000


@dataclass
class OllamaFormat:
    """The response objects of `/api/chat` (`message`) or `/api/generate` (`response`)."""

    model: str  # the name the client asked for (Ollama echoes it)
    chat: bool
    load_s: float = 0.0  # time spent loading the model for this request

    def piece(self, text: str) -> dict[str, Any]:
        """A streamed piece of the answer."""
        out: dict[str, Any] = {"model": self.model, "created_at": iso_time()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = False
        return out

    def calls(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """A chat piece holding tool calls, in Ollama's shape (arguments as an object)."""
        out = self.piece("")
        out["message"]["tool_calls"] = [
            {
                "function": {
                    "name": call["function"]["name"],
                    "arguments": json.loads(call["function"]["arguments"]),
                }
            }
            for call in calls
        ]
        return out

    def final(
        self,
        result: GenerationResult,
        started: float,
        text: str = "",
        calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The last object: done, why, counts and durations (nanoseconds, as Ollama)."""
        out = self.calls(calls) if calls else self.piece(text)
        out.update(
            done=True,
            done_reason=result.finish_reason,
            total_duration=int((time.perf_counter() - started) * NS),
            load_duration=int(self.load_s * NS),
            prompt_eval_count=result.prompt_tokens,
            prompt_eval_duration=int(result.prompt_eval_s * NS),
            eval_count=result.completion_tokens,
            eval_duration=int(result.generation_s * NS),
        )
        return out


@dataclass
class Generation:
    """An admitted, submitted generation and what its end must do."""

    handle: ModelHandle
    record: RequestRecord
    fmt: OllamaFormat
    stream: GenerationStream
    release: Callable[[], None]
    on_end: Callable[[], Awaitable[None]]
    hold: HeldCall | None = None  # with tools: text kept back while it may be a call
    ended: bool = field(default=False)

    async def end(self) -> None:
        """Give the queue place back and run `on_end` (once)."""
        if self.ended:
            return
        self.ended = True
        self.release()
        await self.on_end()


def admit(handle: ModelHandle, state: ServerState) -> Callable[[], None]:
    """Take a place in `handle`'s queue, or raise a 503 when it is full."""
    limits = state.settings.limits
    assert handle.engine is not None
    stats = handle.engine.stats()
    backlog = stats.queued_requests > 0 and stats.queued_requests >= limits.max_queue
    if backlog or handle.in_flight >= stats.n_parallel + limits.max_queue:
        raise overloaded(limits.retry_after_s, "the request queue is full, retry later")
    handle.in_flight += 1
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            handle.in_flight -= 1

    return release


async def submit(
    state: ServerState, offload: Offloader, handle: ModelHandle, gen: GenerationRequest
) -> tuple[GenerationStream, Callable[[], None]]:
    """Admit `gen` and hand it to the engine (tokenized in a worker thread)."""
    release = admit(handle, state)
    try:
        assert handle.engine is not None
        stream = await offload.run(
            handle.engine.submit, gen, big=is_big(gen.prompt), orphan=_cancel
        )
    except BaseException:
        release()
        raise
    return stream, release


def _cancel(stream: GenerationStream) -> None:
    stream.cancel()


def failure(result: GenerationResult) -> APIError | None:
    """The error a finished generation amounts to, if any."""
    if result.finish_reason == "error":
        if result.error and result.error.startswith(GRAMMAR_FAILURE):
            return bad_request(result.error, param="format")
        return internal_error()
    if result.finish_reason == "cancelled":
        return overloaded(1, "the request was cancelled (server shutting down)")
    return None


class Accounting:
    """Counts a generation in the request record and the metrics."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def first_token(self, record: RequestRecord, text: str, ids: tuple[int, ...]) -> None:
        """Stamp the time to the first generated token."""
        if record.ttft_s is None and (text or ids):
            record.ttft_s = time.perf_counter() - record.started

    def generated(self, gen: Generation, count: int) -> None:
        """Generated tokens (all a stream cut short has) and the time to the first."""
        metrics, model = self.state.metrics, gen.handle.id
        gen.record.completion_tokens = count
        metrics.generated_tokens.inc((model,), count)
        if gen.record.ttft_s is not None:
            metrics.ttft.observe((model,), gen.record.ttft_s)

    def finished(self, gen: Generation, result: GenerationResult) -> None:
        """A whole result."""
        gen.record.prompt_tokens = result.prompt_tokens
        gen.record.finish_reason = result.finish_reason
        self.state.metrics.prompt_tokens.inc((gen.handle.id,), result.prompt_tokens)
        self.generated(gen, result.completion_tokens)
        if self.state.audit_content:
            gen.record.completion = result.text


async def result_of(stream: GenerationStream) -> GenerationResult:
    """The result once the final event was read (normally ready at once)."""
    try:
        return stream.result(0)
    except TimeoutError:
        return await asyncio.to_thread(stream.result, RESULT_TIMEOUT_S)


async def collect(request: Request, gen: Generation, books: Accounting) -> GenerationResult | None:
    """The whole result; None (sequence cancelled) if the client leaves first."""
    stream, record = gen.stream, gen.record

    async def consume() -> None:
        async for event in stream:
            books.first_token(record, event.text, event.token_ids)
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
    result = await result_of(stream)
    books.finished(gen, result)
    return result


async def events(gen: Generation, books: Accounting) -> AsyncIterator[bytes]:
    """The streamed pieces, then the final object (or an error line), then `[DONE]`."""
    fmt, record, hold = gen.fmt, gen.record, gen.hold
    finished, seen = False, 0
    try:
        async for event in gen.stream:
            seen += len(event.token_ids)
            books.first_token(record, event.text, event.token_ids)
            text = hold.feed(event.text) if hold is not None and hold.holding else event.text
            if text:
                yield sse(fmt.piece(text))
            if event.finish_reason is not None:
                break
        result = await result_of(gen.stream)
        finished = True
        books.finished(gen, result)
        problem = failure(result)
        if problem is not None:
            yield sse({"error": problem.message})
        else:
            held, calls = hold.finish() if hold is not None else ("", None)
            if calls:
                yield sse(fmt.calls(calls))
            elif held:
                yield sse(fmt.piece(held))
            yield sse(fmt.final(result, record.started))
        yield DONE
    finally:
        if not finished:
            gen.stream.cancel()
            books.generated(gen, seen)
        await gen.end()
