"""The ASGI middleware every request passes: API key, body cap, then log, metrics, audit.

It reads the (capped, timed) body itself and replays it to the app, so a 413 or 408 is sent
before any parsing. After the app returns it writes one stderr line (no prompt or completion
text; everything a client chose, like the path, escaped and bounded) and updates the
Prometheus counters.

Audited requests are never served unaudited: a response that is not streamed is held until
its audit record is written (if that fails, the client gets a 503 instead); a stream's
record is written before its final `data: [DONE]` (if that fails, an error event ends the
stream). While the audit log cannot be written, new requests get a 503 at once, unless the
operator chose `--audit-best-effort`.
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sovcli.server.audit import AuditLog
from sovcli.server.auth import KeyChecker, presented_key
from sovcli.server.errors import (
    APIError,
    audit_unavailable,
    headers_too_large,
    internal_error,
    request_timeout,
)
from sovcli.server.forwarded import ClientResolver
from sovcli.server.logsafe import MAX_METHOD_CHARS, bounded, escape, safe
from sovcli.server.metrics import ServerMetrics
from sovcli.server.responses import DONE
from sovcli.settings import debug_enabled

OPEN_PATHS = frozenset({"/health", "/healthz"})
UNAUDITED_PATHS = frozenset({"/health", "/healthz", "/metrics"})
KNOWN_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/health",
        "/metrics",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
        "/api/pull",
        "/api/stop",
    }
)
JOINED_HEADERS = frozenset({"x-forwarded-for", "forwarded"})  # repeated lines form one list
AUDIT_RETRY_AFTER_S = 5


@dataclass
class RequestRecord:
    """What is known about one request; handlers fill in the model and token counts."""

    method: str
    path: str
    client: str
    proxy: str | None = None  # the trusted proxy the request came through
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
    audited: bool = False  # its audit record was handed to the audit log
    refused: bool = False  # answered with a 503 because the audit log could not be written

    @property
    def endpoint(self) -> str:
        """A bounded label for metrics (unknown paths collapse to `other`)."""
        if self.path in KNOWN_ENDPOINTS:
            return self.path
        if f"/v1{self.path}" in KNOWN_ENDPOINTS:  # the same routes without the /v1 prefix
            return f"/v1{self.path}"
        if self.path.startswith(("/v1/models/", "/models/")):
            return "/v1/models"
        return "other"

    def audit_entry(self) -> dict[str, Any]:
        """The audit record (client-chosen text bounded; the audit log escapes it)."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.wall_time, timezone.utc).isoformat(),
            "client": self.client,
        }
        if self.proxy is not None:
            entry["proxy"] = self.proxy
        entry.update(
            key_id=self.key_id,
            method=bounded(self.method, MAX_METHOD_CHARS),
            endpoint=bounded(self.path),
            model=self.model,
            status=self.status or 499,
            stream=self.stream,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            disconnected=self.disconnected,
            ttft_s=None if self.ttft_s is None else round(self.ttft_s, 4),
            latency_s=round(time.perf_counter() - self.started, 4),
            prompt=self.prompt,
            completion=self.completion,
        )
        return entry


def log_line(text: str) -> None:
    """Write one line on stderr, prefixed with the UTC time (control characters escaped)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    try:
        sys.stderr.write(f"{stamp} {escape(text)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr full or closed: serving goes on (the audit log
        pass  # is the record that must not be lost, and it fails requests by itself)


def log_exception(where: str, exc: BaseException) -> None:
    """One line about an unexpected error; the traceback only with SOVCLI_DEBUG=1."""
    log_line(f"error in {safe(where)}: {type(exc).__name__}: {bounded(str(exc), 512)}")
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


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers by lower-case name (forwarded-for lines joined, others: last wins)."""
    headers: dict[str, str] = {}
    for key, value in raw:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        if name in JOINED_HEADERS and name in headers:
            text = f"{headers[name]},{text}"
        headers[name] = text
    return headers


def _is_event_stream(message: dict) -> bool:
    return any(
        k.lower() == b"content-type" and v.startswith(b"text/event-stream")
        for k, v in message.get("headers", [])
    )


class RequestGate:
    """Pure ASGI middleware (no buffering of streams, so streams stay streams)."""

    def __init__(
        self,
        app: Any,
        *,
        metrics: ServerMetrics,
        checker: KeyChecker | None,
        max_body_bytes: int,
        audit: AuditLog | None,
        log_requests: bool,
        body_timeout_s: float = 60.0,
        max_header_bytes: int = 16 * 1024,
        audit_required: bool = True,
        resolver: ClientResolver | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.checker = checker
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes
        self.audit = audit
        self.audit_required = audit_required
        self.resolver = resolver or ClientResolver()
        self.log_requests = log_requests
        self._audit_down = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = header_map(scope["headers"])
        origin = self.resolver.origin(scope.get("client"), headers)
        record = RequestRecord(
            method=scope["method"], path=scope["path"], client=origin.client, proxy=origin.proxy
        )
        scope.setdefault("state", {})["record"] = record
        audited = self.audit is not None and record.path not in UNAUDITED_PATHS
        reply = _Reply(send, record, self._audit_hook if audited else None)
        self.metrics.in_flight += 1
        try:
            if audited and not self._audit_ready():
                assert self.audit is not None
                self.audit.note_refused()
                record.refused, record.status = True, 503
                await send_error(send, self._audit_error())
                return
            await self._handle(scope, receive, reply.send, record, headers)
        except Exception as exc:
            log_exception(f"{record.method} {record.path}", exc)
            if not reply.started:
                await send_error(reply.send, internal_error())
            elif record.status < 500:
                record.status = 500
        finally:
            try:
                self._finish(record, audited)
            finally:
                self.metrics.in_flight -= 1  # after the log line: in flight until logged

    async def _handle(
        self, scope: dict, receive: Any, send: Any, record: RequestRecord, headers: dict[str, str]
    ) -> None:
        size = len(scope.get("raw_path", b"")) + sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.max_header_bytes:
            await send_error(send, headers_too_large(self.max_header_bytes))
            return
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
            result = await self._read_body(receive, headers, record)
            if isinstance(result, APIError):
                await send_error(send, result)
                return
            if result is None:  # the client left
                return
            body = result
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(
        self, receive: Any, headers: dict[str, str], record: RequestRecord
    ) -> bytes | APIError | None:
        """The whole body; an error to send (413 too large, 408 too slow); None if the
        client disconnected."""
        too_large = APIError(
            413,
            f"the request body is larger than this server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return too_large
        deadline = time.monotonic() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                return request_timeout(self.body_timeout_s)
            if message["type"] == "http.disconnect":
                record.status, record.disconnected = 499, True
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # ---- audit -------------------------------------------------------------------------
    def _audit_ready(self) -> bool:
        assert self.audit is not None
        ready = self.audit.ready()
        self._note_audit_state()
        return ready or not self.audit_required

    def _audit_error(self) -> APIError:
        assert self.audit is not None
        return audit_unavailable(self.audit.last_error, AUDIT_RETRY_AFTER_S)

    def _audit_hook(self, record: RequestRecord, answer: str | None) -> APIError | None:
        """Write `record`'s audit entry. When it cannot be written and audits are required,
        the 503 the client gets instead; `answer` says what becomes of the response then
        ("refused": replaced by that 503, "cut": a stream ended with it, None: nobody to
        tell), and the kept entry says so."""
        assert self.audit is not None
        record.audited = True
        entry = record.audit_entry()
        instead = None
        if self.audit_required and answer is not None:
            instead = {**entry, "error": "audit_unavailable"}
            if answer == "refused":
                instead["status"] = 503
        written = self.audit.write(entry, if_unwritten=instead)
        self._note_audit_state()
        if written or not self.audit_required:
            return None
        record.refused = True
        return self._audit_error()

    def _note_audit_state(self) -> None:
        """One log line when the audit log stops or starts being writable."""
        assert self.audit is not None
        failing = self.audit.failing
        if failing == self._audit_down:
            return
        self._audit_down = failing
        if failing:
            then = (
                "serving on without audit records (--audit-best-effort)"
                if not self.audit_required
                else "requests get a 503 until it can"
            )
            log_line(f"audit log {self.audit.path} cannot be written ({self.audit.last_error}): "
                     f"{then}")  # fmt: skip
        else:
            log_line(f"audit log {self.audit.path} is writable again; waiting records written")

    # ---- after the response ------------------------------------------------------------
    def _finish(self, record: RequestRecord, audited: bool) -> None:
        elapsed = time.perf_counter() - record.started
        status = record.status or 499
        self.metrics.requests.inc((record.endpoint, str(status)))
        self.metrics.latency.observe((record.endpoint,), elapsed)
        if self.log_requests:
            parts = [record.client, bounded(record.method, MAX_METHOD_CHARS), bounded(record.path)]
            parts.append(str(status))
            if record.proxy:
                parts.append(f"via={record.proxy}")
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
            if record.refused:
                parts.append("audit-unavailable")
            log_line(" ".join(parts))
        if audited and not record.audited and not record.refused:
            record.status = status
            self._audit_hook(record, None)  # nobody to tell: kept for when the log recovers


class _Reply:
    """The `send` of one request: it notes the status, and for audited requests writes the
    audit record before the response is complete (see the module docstring)."""

    def __init__(self, send: Any, record: RequestRecord, audit_hook: Any) -> None:
        self._send = send
        self.record = record
        self.audit_hook = audit_hook  # (record, answer) -> APIError | None; None: unaudited
        self.started = False  # the response start went to the client
        self._held: dict | None = None  # the start of a response held for its audit record
        self._body: list[bytes] = []
        self._streaming = False

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.record.status = message["status"]
            self._streaming = _is_event_stream(message)
            if self.audit_hook is not None and not self._streaming:
                self._held, self._body = message, []
                return
            self.started = True
            await self._send(message)
            return
        if kind != "http.response.body" or self.audit_hook is None:
            await self._send(message)
            return
        if self._held is not None:
            await self._held_body(message)
        elif self._streaming and message.get("body") == DONE and not self.record.audited:
            await self._stream_end(message)
        else:
            await self._send(message)

    async def _held_body(self, message: dict) -> None:
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        held, self._held = self._held, None
        assert held is not None
        refusal = self.audit_hook(self.record, "refused")
        self.started = True
        if refusal is None:
            await self._send(held)
            await self._send({"type": "http.response.body", "body": b"".join(self._body)})
            return
        self.record.status = refusal.status
        await send_error(self._send, refusal)

    async def _stream_end(self, message: dict) -> None:
        refusal = self.audit_hook(self.record, "cut")
        if refusal is not None:
            event = b"data: " + refusal.body_bytes() + b"\n\n"
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
        await self._send(message)
