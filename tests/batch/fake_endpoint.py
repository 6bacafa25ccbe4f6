"""Loopback HTTP servers for batch tests: a fake OpenAI-compatible endpoint and a fake proxy.

Both run in a thread on 127.0.0.1 and remember every request (method, target, headers,
body), so a test can assert what was sent where. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """One request a fake server received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    """A running fake server: its URL and what it received."""

    url: str
    requests: list[Seen] = field(default_factory=list)

    def bodies(self) -> bytes:
        """Every request body, joined (to search for leaked text)."""
        return b"\n".join(r.body for r in self.requests)


Reply = Callable[[dict[str, Any]], Any]  # request JSON -> content, or (status, headers, bytes)


def _completion(content: str) -> bytes:
    # json.dumps keeps a lone surrogate as the escape "\ud800", as a hostile server may send
    return json.dumps(
        {
            "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        }
    ).encode("ascii")


def _handler(server: FakeServer, reply: Reply) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _remember(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append(Seen(self.command, self.path, headers, body))
            return body

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._remember()
            self._send(200, json.dumps({"data": [{"id": "m"}]}).encode())

        def do_POST(self) -> None:
            body = self._remember()
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                payload = {}
            answer = reply(payload)
            if isinstance(answer, tuple):
                self._send(*answer)
            else:
                self._send(200, _completion(str(answer)))

    return Handler


@contextmanager
def serve(reply: Reply | str = "a summary") -> Iterator[FakeServer]:
    """A fake endpoint (or proxy) on 127.0.0.1 answering every POST with `reply`."""
    answer: Reply = reply if callable(reply) else (lambda _payload, text=reply: text)
    holder = FakeServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder, answer))
    httpd.daemon_threads = True
    holder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        httpd.shutdown()
        httpd.server_close()
