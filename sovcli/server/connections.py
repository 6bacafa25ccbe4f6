"""Connection guards uvicorn lacks: a header timeout and a cap on open connections.

uvicorn (h11) waits forever for a request's headers, and its `limit_concurrency` answers
503 to new requests while slow connections keep their places, so a few hundred clients
trickling header bytes would hold the server. `guarded_protocol` returns uvicorn's h11
protocol with two guards:

- **Header timeout.** From a request's first byte (or the connection's opening) its request
  line and headers must arrive within `header_timeout_s`; else the connection gets a 408 and
  is closed. Between requests, uvicorn's keep-alive timeout applies.
- **Connection cap.** When a new connection would exceed `max_connections`, the oldest
  connection still waiting for headers is closed to make room, else the oldest idle
  keep-alive connection; if every connection has a request in progress, the new one is
  closed. Slow or idle clients can never lock out one that sends a whole request.

Headers larger than uvicorn's `h11_max_incomplete_event_size` (set by the runner) get a 400.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = (
    b'{"error": {"message": "the request headers did not arrive in time", '
    b'"type": "invalid_request_error", "param": null, "code": "request_timeout"}}'
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap (class attributes
    set by `guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_connections: int = 512

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Start the header clock; make room (or refuse) when at the cap."""
        self.opened_at = time.monotonic()
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections and not self._make_room():
            self.transport.close()
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        """Feed h11; the header clock runs while a request's headers are incomplete."""
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm_header_timer()
        elif self._awaiting_headers():
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header clock."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    # ---- helpers -----------------------------------------------------------------------
    def _awaiting_headers(self) -> bool:
        """A request has not been parsed yet on this connection (fresh or between requests)."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _busy(self) -> bool:
        """A request is being received or answered."""
        return not self._awaiting_headers()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the oldest connection waiting for headers, else the oldest idle one."""
        waiting: list[Any] = []
        idle: list[Any] = []
        for other in self.connections:
            if other is self or not isinstance(other, GuardedH11Protocol):
                continue
            if other.transport.is_closing() or other._busy():
                continue
            (waiting if other._header_timer is not None else idle).append(other)
        victims = waiting or idle
        if not victims:
            return False
        oldest = min(victims, key=lambda c: c.opened_at)
        oldest._disarm_header_timer()
        oldest.transport.close()
        self.connections.discard(oldest)
        return True


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's `http=` setting, with these limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )
