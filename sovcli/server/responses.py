"""OpenAI response bodies and stream chunks (chat and text completions), built cheaply.

Stream chunks for plain text deltas are assembled from a precomputed prefix and suffix
around the JSON-escaped text: the server writes one per token for every client.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sovcli import __version__
from sovcli.engine.types import GenerationResult, TokenLogprob

SYSTEM_FINGERPRINT = f"sovcli-{__version__}"
DONE = b"data: [DONE]\n\n"


def new_id(prefix: str, sep: str = "-") -> str:
    """A random response id, e.g. `chatcmpl-3f2a...` (the Responses API: `resp_3f2a...`)."""
    return f"{prefix}{sep}{secrets.token_hex(12)}"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return (
        b"data: "
        + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        + b"\n\n"
    )


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", "replace"))


def chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...], top: int) -> dict:
    """`choices[].logprobs` of a chat completion."""
    return {
        "content": [
            {
                "token": item.token,
                "logprob": item.logprob,
                "bytes": _token_bytes(item.token),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": _token_bytes(t)}
                    for t, lp in item.top[:top]
                ],
            }
            for item in items
        ],
        "refusal": None,
    }


def completion_logprobs(
    items: list[TokenLogprob] | tuple[TokenLogprob, ...], top: int, offset: int = 0
) -> dict:
    """`choices[].logprobs` of a text completion (the legacy shape)."""
    offsets, position = [], offset
    for item in items:
        offsets.append(position)
        position += len(item.token)
    return {
        "tokens": [i.token for i in items],
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [dict(i.top[:top]) for i in items],
        "text_offset": offsets,
    }


@dataclass(frozen=True)
class Choice:
    """One finished choice of a non-streamed response."""

    result: GenerationResult
    content: str | None  # None when the choice is tool calls
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None


def combined_usage(results: list[GenerationResult]) -> dict[str, Any]:
    """`usage` of `n` choices of one prompt: the prompt counted once, completions summed."""
    first = results[0]
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": first.cached_prompt_tokens},
    }


class _Format:
    """What chat and text completions share: the id, the chunk envelope, usage, the body.

    `n` choices are streamed interleaved, each chunk naming its `index`."""

    id_prefix: str  # of the response id
    object_name: str  # of the whole (non-streamed) response
    chunk_object: str  # of each stream chunk
    text_open: str  # the JSON of a text chunk's choice up to the text
    text_close: bytes  # ... and after it

    def __init__(self, model: str, top_logprobs: int | None, n: int = 1) -> None:
        self.id = new_id(self.id_prefix)
        self.created = int(time.time())
        self.model = model
        self.n = n
        self.top_logprobs = top_logprobs  # None: logprobs not requested
        head = (
            '{"id":'
            + json.dumps(self.id)
            + f',"object":"{self.chunk_object}","created":{self.created},"model":'
            + json.dumps(model)
            + ',"system_fingerprint":'
            + json.dumps(SYSTEM_FINGERPRINT)
            + ',"choices":[{'
        )
        zero = '"index":0'
        self._prefixes = [
            (head + self.text_open.replace(zero, f'"index":{i}')).encode("utf-8") for i in range(n)
        ]
        self._closes = [
            self.text_close.replace(zero.encode(), f'"index":{i}'.encode()) for i in range(n)
        ]
        self._prefix = self._prefixes[0]

    def _plain_text_chunk(self, text: str, index: int = 0) -> bytes:
        """A text delta without logprobs, assembled around the escaped text."""
        encoded = json.dumps(text, ensure_ascii=False).encode("utf-8")
        return b"data: " + self._prefixes[index] + encoded + self._closes[index]

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": self.chunk_object,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
                **extra,
            }
        )

    def usage_chunk(self, results: list[GenerationResult]) -> bytes:
        """The `stream_options.include_usage` chunk: no choices, the usage."""
        return self._chunk([], usage=combined_usage(results))

    def finish_chunk(self, finish_reason: str, index: int = 0) -> bytes:
        """The last chunk of one choice."""
        raise NotImplementedError

    def closing(
        self, finishes: list[str], results: list[GenerationResult], include_usage: bool
    ) -> list[bytes]:
        """The events after the last delta: each choice's finish, the usage, `[DONE]`."""
        chunks = [self.finish_chunk(finish, index) for index, finish in enumerate(finishes)]
        if include_usage:
            chunks.append(self.usage_chunk(results))
        chunks.append(DONE)
        return chunks

    def failure(self, message: str) -> list[bytes]:
        """The events of a stream that ends badly: an error event, then `[DONE]`."""
        return [sse_error(message), DONE]

    def _body(self, choices: list[dict[str, Any]], results: list[GenerationResult]) -> dict:
        return {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
            "usage": combined_usage(results),
        }


def sse_error(message: str) -> bytes:
    """An error event in OpenAI's error shape (`server_error`)."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ChatFormat(_Format):
    """Builds the bodies and chunks of one chat completion."""

    id_prefix = "chatcmpl"
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"
    text_open = '"index":0,"delta":{"content":'
    text_close = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def opening(self) -> list[bytes]:
        """The first chunk of each choice: the assistant role, empty content."""
        return [
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for index in range(self.n)
        ]

    def text_chunk(
        self, text: str, logprobs: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> bytes:
        """A content delta."""
        if self.top_logprobs is None or not logprobs:
            return self._plain_text_chunk(text, index)
        return self._chunk(
            [
                {
                    "index": index,
                    "delta": {"content": text},
                    "logprobs": chat_logprobs(logprobs, self.top_logprobs),
                    "finish_reason": None,
                }
            ]
        )

    def tool_calls_chunk(self, calls: list[dict[str, Any]], index: int = 0) -> bytes:
        """The tool calls, whole, in one delta."""
        delta_calls = [{"index": i, **call} for i, call in enumerate(calls)]
        return self._chunk(
            [
                {
                    "index": index,
                    "delta": {"tool_calls": delta_calls},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def finish_chunk(self, finish_reason: str, index: int = 0) -> bytes:
        """The last chunk of a choice: empty delta and the finish reason."""
        return self._chunk(
            [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}]
        )

    def body(self, choices: list[Choice]) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        out = []
        for index, choice in enumerate(choices):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": choice.content,
                "refusal": None,
            }
            if choice.tool_calls:
                message["tool_calls"] = choice.tool_calls
            logprobs = (
                chat_logprobs(choice.result.logprobs, self.top_logprobs)
                if self.top_logprobs is not None
                else None
            )
            out.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                }
            )
        return self._body(out, [c.result for c in choices])


class CompletionFormat(_Format):
    """Builds the bodies and chunks of one text completion (`echo`: the prompt, shown first)."""

    id_prefix = "cmpl"
    object_name = "text_completion"
    chunk_object = "text_completion"
    text_open = '"text":'
    text_close = b',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, model: str, top_logprobs: int | None, n: int = 1, echo: str = "") -> None:
        super().__init__(model, top_logprobs, n)
        self.echo = echo
        self.offsets = [0] * n

    def opening(self) -> list[bytes]:
        """The echoed prompt, if any (once per choice)."""
        return [self.text_chunk(self.echo, (), i) for i in range(self.n)] if self.echo else []

    def text_chunk(
        self, text: str, logprobs: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> bytes:
        """A text delta."""
        if self.top_logprobs is None or not logprobs:
            self.offsets[index] += len(text)
            return self._plain_text_chunk(text, index)
        lp = completion_logprobs(logprobs, self.top_logprobs, self.offsets[index])
        self.offsets[index] += len(text)
        return self._chunk([{"text": text, "index": index, "logprobs": lp, "finish_reason": None}])

    def tool_calls_chunk(self, calls: list[dict[str, Any]], index: int = 0) -> bytes:
        """Text completions have no tools."""
        raise NotImplementedError

    def finish_chunk(self, finish_reason: str, index: int = 0) -> bytes:
        """The last chunk of a choice."""
        return self._chunk(
            [{"text": "", "index": index, "logprobs": None, "finish_reason": finish_reason}]
        )

    def body(self, choices: list[Choice]) -> dict[str, Any]:
        """The whole (non-streamed) response: the echo, then the completion."""
        out = []
        for index, choice in enumerate(choices):
            logprobs = (
                completion_logprobs(choice.result.logprobs, self.top_logprobs)
                if self.top_logprobs is not None
                else None
            )
            out.append(
                {
                    "text": self.echo + (choice.content or ""),
                    "index": index,
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                }
            )
        return self._body(out, [c.result for c in choices])
