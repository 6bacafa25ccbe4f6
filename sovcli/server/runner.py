"""Run the app with uvicorn on a socket bound here, until SIGINT/SIGTERM.

Binding first turns "address in use" into a one-line error and makes `--port 0` (pick a
free port) work. On a signal, uvicorn stops accepting, lets in-flight requests finish for
`shutdown_grace_s`, then cancels them (which cancels their engine sequences) and the app
closes its engines. A model that fails to load stops the server with that error.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sovcli.errors import EngineError, SovcliError, UsageError
from sovcli.server.registry import EngineFactory
from sovcli.server.settings import ServerSettings

if TYPE_CHECKING:
    import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when host is an IPv6 address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"cannot resolve the address '{host}'", hint="e.g. --host 127.0.0.1"
        ) from exc
    family, kind, proto, _name, address = infos[0]
    # With proto IPPROTO_TCP (not 0), asyncio sets TCP_NODELAY on every accepted connection;
    # without it, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="Pick another port with --port (or --port 0 for any free port).",
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, settings: ServerSettings) -> uvicorn.Server:
    """The uvicorn server that runs `app`: no access log, lifespan on, graceful shutdown,
    h11 with a header timeout, a connection cap and a header size cap (see `connections`).

    uvicorn's own forwarded-header handling is off: the app decides whom to believe
    (`--trusted-proxy`), so a client cannot write another address into the logs."""
    import uvicorn

    from sovcli.server.connections import guarded_protocol

    limits = settings.limits
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
        http=guarded_protocol(limits.header_timeout_s, limits.max_connections),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(
    settings: ServerSettings,
    *,
    engine_factory: EngineFactory | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted. Raises `EngineError` when a model cannot be loaded."""
    from sovcli.server.app import create_app

    fatal: list[BaseException] = []
    server_box: list[uvicorn.Server] = []

    def on_fatal(exc: Exception) -> None:
        fatal.append(exc)
        if server_box:
            server_box[0].should_exit = True

    app = create_app(settings, engine_factory=engine_factory, on_fatal=on_fatal)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    server = uvicorn_server(app, settings)
    server_box.append(server)
    if fatal:  # failed before the server object existed
        server.should_exit = True
    if on_listening is not None:
        on_listening(f"http://{shown_host}:{port}")
    in_main = threading.current_thread() is threading.main_thread()
    previous_term = signal.getsignal(signal.SIGTERM) if in_main else None
    if in_main:
        # uvicorn re-raises the signal it caught after shutting down; a no-op handler makes
        # SIGTERM end the process normally (exit 0) once everything is closed.
        signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn already shut down gracefully
    finally:
        if in_main and previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        sock.close()
    if fatal:
        exc = fatal[0]
        if isinstance(exc, SovcliError):
            raise exc
        raise EngineError(f"cannot load the model: {exc}")
