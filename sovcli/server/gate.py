"""The ASGI middleware every request passes: API key, body cap, then log, metrics, audit.

It reads the (capped) body itself and replays it to the app, so a 413 is sent before any
parsing; after the app returns it writes one stderr line (no prompt or completion text),
updates the Prometheus counters and appends the audit record.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sovcli.server.audit import AuditLog
from sovcli.server.auth import KeyChecker, presented_key
from sovcli.server.errors import APIError, internal_error
from sovcli.server.metrics import ServerMetrics
from sovcli.settings import debug_enabled

OPEN_PATHS = frozenset({"/health", "/healthz"})
KNOWN_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/health",
        "/metrics",
    }
)


@dataclass
class RequestRecord:
    """What is known about one request; handlers fill in the model and token counts."""

    method: str
    path: str
    client: str
    started: float = field(default_factory=time.perf_counter)
    wall_time: float = field(default_factory=time.time)
    status: int = 0
    key_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    finish_reason: str | None = None
    stream: bool = False
    disconnected: bool = False
    prompt: Any = None  # only kept for --audit-content
    completion: str | None = None  # only kept for --audit-content

    @property
    def endpoint(self) -> str:
        """A bounded label for metrics (unknown paths collapse to `other`)."""
        if self.path in KNOWN_ENDPOINTS:
            return self.path
        if self.path.startswith("/v1/models/"):
            return "/v1/models"
        return "other"


def log_line(text: str) -> None:
    """Write one line on stderr, prefixed with the UTC time."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    sys.stderr.write(f"{stamp} {text}\n")
    sys.stderr.flush()


def log_exception(where: str, exc: BaseException) -> None:
    """One line about an unexpected error; the traceback only with SOVCLI_DEBUG=1."""
    log_line(f"error in {where}: {type(exc).__name__}: {exc}")
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


async def send_error(send: Any, err: APIError) -> None:
    """Send a whole error response in OpenAI's shape."""
    body = err.body_bytes()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGate:
    """Pure ASGI middleware (no buffering of responses, so streams stay streams)."""

    def __init__(
        self,
        app: Any,
        *,
        metrics: ServerMetrics,
        checker: KeyChecker | None,
        max_body_bytes: int,
        audit: AuditLog | None,
        log_requests: bool,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.checker = checker
        self.max_body_bytes = max_body_bytes
        self.audit = audit
        self.log_requests = log_requests

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = RequestRecord(
            method=scope["method"],
            path=scope["path"],
            client=f"{client[0]}:{client[1]}" if client else "-",
        )
        scope.setdefault("state", {})["record"] = record
        started = False

        async def capture(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                record.status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self._handle(scope, receive, capture, record)
        except Exception as exc:
            log_exception(f"{record.method} {record.path}", exc)
            if not started:
                await send_error(capture, internal_error())
            elif record.status < 500:
                record.status = 500
        finally:
            try:
                self._finish(record)
            finally:
                self.metrics.in_flight -= 1  # after the log line: in flight until logged

    async def _handle(self, scope: dict, receive: Any, send: Any, record: RequestRecord) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (
            self.checker is not None
            and record.path not in OPEN_PATHS
            and record.method != "OPTIONS"
        ):
            key_id = self.checker.identify(presented_key(headers))
            if key_id is None:
                await send_error(
                    send,
                    APIError(
                        401,
                        "missing or wrong API key; send it as 'Authorization: Bearer KEY'",
                        code="invalid_api_key",
                    ),
                )
                return
            record.key_id = key_id
        body = b""
        if record.method in ("POST", "PUT", "PATCH"):
            too_large = APIError(
                413,
                f"the request body is larger than this server's limit of "
                f"{self.max_body_bytes} bytes",
                code="request_too_large",
            )
            declared = headers.get("content-length")
            if declared is not None and (
                not declared.isdigit() or int(declared) > self.max_body_bytes
            ):
                await send_error(send, too_large)
                return
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    record.status, record.disconnected = 499, True
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await send_error(send, too_large)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _finish(self, record: RequestRecord) -> None:
        elapsed = time.perf_counter() - record.started
        status = record.status or 499
        self.metrics.requests.inc((record.endpoint, str(status)))
        self.metrics.latency.observe((record.endpoint,), elapsed)
        if self.log_requests:
            parts = [record.client, record.method, record.path, str(status)]
            if record.key_id:
                parts.append(f"key={record.key_id}")
            if record.model:
                parts.append(f"model={record.model}")
            if record.prompt_tokens is not None:
                parts.append(f"prompt={record.prompt_tokens}")
            if record.completion_tokens is not None:
                parts.append(f"gen={record.completion_tokens}")
            if record.ttft_s is not None:
                parts.append(f"ttft={record.ttft_s:.3f}s")
            parts.append(f"time={elapsed:.3f}s")
            if record.finish_reason:
                parts.append(f"finish={record.finish_reason}")
            if record.disconnected:
                parts.append("client-disconnected")
            log_line(" ".join(parts))
        if self.audit is not None and record.path not in ("/health", "/healthz", "/metrics"):
            self.audit.write(
                {
                    "time": datetime.fromtimestamp(record.wall_time, timezone.utc).isoformat(),
                    "client": record.client,
                    "key_id": record.key_id,
                    "method": record.method,
                    "endpoint": record.path,
                    "model": record.model,
                    "status": status,
                    "stream": record.stream,
                    "prompt_tokens": record.prompt_tokens,
                    "completion_tokens": record.completion_tokens,
                    "finish_reason": record.finish_reason,
                    "disconnected": record.disconnected,
                    "ttft_s": None if record.ttft_s is None else round(record.ttft_s, 4),
                    "latency_s": round(elapsed, 4),
                    "prompt": record.prompt,
                    "completion": record.completion,
                }
            )
