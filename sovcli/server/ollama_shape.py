"""ASGI middleware that gives every `/api/` response Ollama's wire shapes.

It sits outside the request gate, so it also reshapes what the gate answers itself (401,
413, audit 503s):

- an error body in OpenAI's shape, `{"error": {"message": ...}}`, becomes Ollama's
  `{"error": "message"}`;
- a server-sent event stream becomes NDJSON (`application/x-ndjson`, one JSON object per
  line), and its closing `[DONE]` is dropped. The Ollama handlers stream events so that the
  gate's stream handling applies to them unchanged: the audit record is written before the
  end of the stream, and when it cannot be, the gate's error event ends the stream, which
  arrives here as an `{"error": ...}` line (what Ollama clients raise on).
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "/api/"
NDJSON = b"application/x-ndjson"
_DONE_PAYLOAD = b"[DONE]"


def ollama_error(body: bytes) -> bytes:
    """`{"error": {"message": m, ...}}` as `{"error": m}`; any other body unchanged."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        message = parsed["error"].get("message")
        return json.dumps({"error": str(message)}, ensure_ascii=False).encode("utf-8")
    return body


class _Ndjson:
    """Turns `data: {...}\\n\\n` events into `{...}\\n` lines, chunk by chunk."""

    def __init__(self) -> None:
        self.carry = b""

    def feed(self, chunk: bytes) -> bytes:
        self.carry += chunk
        *events, self.carry = self.carry.split(b"\n\n")
        lines = []
        for event in events:
            payload = event[6:] if event.startswith(b"data: ") else event
            if not payload or payload == _DONE_PAYLOAD:
                continue
            lines.append(ollama_error(payload) + b"\n")
        return b"".join(lines)


class OllamaShape:
    """Pure ASGI middleware (streams stay streams) for paths under `/api/`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        stream: _Ndjson | None = None
        held: dict | None = None
        parts: list[bytes] = []

        async def reshaped(message: dict) -> None:
            nonlocal stream, held
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if kind.startswith(b"text/event-stream"):
                    stream = _Ndjson()
                    message = {**message, "headers": _with_type(headers, NDJSON)}
                elif message["status"] >= 400 and kind.startswith(b"application/json"):
                    held = message
                    return
                await send(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            if stream is not None:
                more = message.get("more_body", False)
                await send({**message, "body": stream.feed(message.get("body", b""))})
                if not more:
                    stream = None
            elif held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = ollama_error(b"".join(parts))
                start, held = held, None
                headers = _with_length(start.get("headers", []), len(body))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send(message)

        await self.app(scope, receive, reshaped)


def _with_type(headers: list, kind: bytes) -> list:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    return [(b"content-type", kind), *kept]


def _with_length(headers: list, length: int) -> list:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]
