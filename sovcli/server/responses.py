"""OpenAI response bodies and stream chunks (chat and text completions), built cheaply.

Stream chunks for plain text deltas are assembled from a precomputed prefix and suffix
around the JSON-escaped text: the server writes one per token for every client.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sovcli import __version__
from sovcli.engine.types import GenerationResult, TokenLogprob

SYSTEM_FINGERPRINT = f"sovcli-{__version__}"
DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    """A random response id, e.g. `chatcmpl-3f2a...`."""
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return (
        b"data: "
        + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        + b"\n\n"
    )


def usage(result: GenerationResult) -> dict[str, Any]:
    """OpenAI's `usage` object."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


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


class _Format:
    """What chat and text completions share: the id, the chunk envelope, usage, the body."""

    id_prefix: str  # of the response id
    object_name: str  # of the whole (non-streamed) response
    chunk_object: str  # of each stream chunk
    text_open: str  # the JSON of a text chunk's choice up to the text
    text_close: bytes  # ... and after it

    def __init__(self, model: str, top_logprobs: int | None) -> None:
        self.id = new_id(self.id_prefix)
        self.created = int(time.time())
        self.model = model
        self.top_logprobs = top_logprobs  # None: logprobs not requested
        self._prefix = (
            '{"id":'
            + json.dumps(self.id)
            + f',"object":"{self.chunk_object}","created":{self.created},"model":'
            + json.dumps(model)
            + ',"system_fingerprint":'
            + json.dumps(SYSTEM_FINGERPRINT)
            + ',"choices":[{'
            + self.text_open
        ).encode("utf-8")

    def _plain_text_chunk(self, text: str) -> bytes:
        """A text delta without logprobs, assembled around the escaped text."""
        encoded = json.dumps(text, ensure_ascii=False).encode("utf-8")
        return b"data: " + self._prefix + encoded + self.text_close

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

    def usage_chunk(self, result: GenerationResult) -> bytes:
        """The `stream_options.include_usage` chunk: no choices, the usage."""
        return self._chunk([], usage=usage(result))

    def _body(self, choice: dict[str, Any], result: GenerationResult) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
            "usage": usage(result),
        }


class ChatFormat(_Format):
    """Builds the bodies and chunks of one chat completion."""

    id_prefix = "chatcmpl"
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"
    text_open = '"index":0,"delta":{"content":'
    text_close = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def opening(self) -> list[bytes]:
        """The first chunk: the assistant role, empty content."""
        return [
            self._chunk(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        ]

    def text_chunk(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> bytes:
        """A content delta."""
        if self.top_logprobs is None or not logprobs:
            return self._plain_text_chunk(text)
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"content": text},
                    "logprobs": chat_logprobs(logprobs, self.top_logprobs),
                    "finish_reason": None,
                }
            ]
        )

    def tool_calls_chunk(self, calls: list[dict[str, Any]]) -> bytes:
        """The tool calls, whole, in one delta."""
        delta_calls = [{"index": i, **call} for i, call in enumerate(calls)]
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": delta_calls},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def finish_chunk(self, finish_reason: str) -> bytes:
        """The last choice chunk: empty delta and the finish reason."""
        return self._chunk(
            [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}]
        )

    def body(
        self,
        result: GenerationResult,
        *,
        content: str | None,
        finish_reason: str,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        logprobs = (
            chat_logprobs(result.logprobs, self.top_logprobs)
            if self.top_logprobs is not None
            else None
        )
        choice = {
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return self._body(choice, result)


class CompletionFormat(_Format):
    """Builds the bodies and chunks of one text completion (`echo`: the prompt, shown first)."""

    id_prefix = "cmpl"
    object_name = "text_completion"
    chunk_object = "text_completion"
    text_open = '"text":'
    text_close = b',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, model: str, top_logprobs: int | None, echo: str = "") -> None:
        super().__init__(model, top_logprobs)
        self.echo = echo
        self.offset = 0

    def opening(self) -> list[bytes]:
        """The echoed prompt, if any."""
        return [self.text_chunk(self.echo)] if self.echo else []

    def text_chunk(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> bytes:
        """A text delta."""
        if self.top_logprobs is None or not logprobs:
            self.offset += len(text)
            return self._plain_text_chunk(text)
        lp = completion_logprobs(logprobs, self.top_logprobs, self.offset)
        self.offset += len(text)
        return self._chunk([{"text": text, "index": 0, "logprobs": lp, "finish_reason": None}])

    def finish_chunk(self, finish_reason: str) -> bytes:
        """The last choice chunk."""
        return self._chunk(
            [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish_reason}]
        )

    def body(self, result: GenerationResult, *, finish_reason: str) -> dict[str, Any]:
        """The whole (non-streamed) response: the echo, then the completion."""
        logprobs = (
            completion_logprobs(result.logprobs, self.top_logprobs)
            if self.top_logprobs is not None
            else None
        )
        choice = {
            "text": self.echo + result.text,
            "index": 0,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return self._body(choice, result)
