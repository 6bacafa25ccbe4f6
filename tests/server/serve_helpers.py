"""Helpers for the server tests: the same settings, served either in-process on the fake
engine (`create_app` under uvicorn in a thread) or by a `sovcli serve` subprocess with the real
model; plain HTTP, raw streams, metrics.

Both kinds of server offer `url`, `base_url`, `model_id`, `alias`, `audit_path` and `stop()`;
tests that must pass on both take a fixture parametrized over `TIERS` (the real one `slow`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from fake_engine import FakeEngine, FakeEngineFactory, Reply, rules

from sovcli.server.settings import ServedModel, ServerSettings

API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
LISTENING = re.compile(r"serving .* at (http://127\.0\.0\.1:\d+)/v1")
FAKE, REAL = "fake", "real"
TIERS = [FAKE, pytest.param(REAL, marks=pytest.mark.slow)]
LONG_STORY = "Once upon a time a dragon slept under the hill, and the village kept quiet. " * 40

WEATHER_CALL = '{"name":"get_weather","arguments":{"city":"%s","unit":"celsius"}}'
# What the fake model answers to the prompts the tests send (anything else: "You said: ...").
FAKE_REPLIES = rules(
    {
        "long story": LONG_STORY,
        "Describe Paris as JSON.": '{"city": "Paris", "country": "France", '
        '"population_millions": 2, "capital": true, "continent": "Europe"}',
        "what is the capital of Italy?": '{"capital": "Rome"}',
        # Calls fit in 80 tokens (the tests' max_tokens), so no <tool_call> wrapper.
        "weather in Paris?": WEATHER_CALL % "Paris",
        "Weather in Rome, please.": WEATHER_CALL % "Rome",
        "Stop me halfway": Reply("Half an answer, and then", end="cancelled"),
        "Break down": Reply("Half an answer, and then", end="error"),
    }
)


def server_settings(**fields: Any) -> ServerSettings:
    """Settings of a test server (any port, one thread, a short grace for quick stops).

    The models are filled in at launch, and `audit_log` names a file in the server's folder.
    """
    return ServerSettings(models=(), port=0, threads=1, shutdown_grace_s=1.0, **fields)


def placed(
    settings: ServerSettings, models: tuple[ServedModel, ...], workdir: Path
) -> ServerSettings:
    """`settings` serving `models`, with its audit log in `workdir`."""
    audit_log = workdir / settings.audit_log if settings.audit_log else None
    return replace(settings, models=models, audit_log=audit_log)


def cli_args(settings: ServerSettings, workdir: Path) -> list[str]:
    """The `sovcli serve` options that give `settings` (keys go through SOVCLI_API_KEYS)."""
    limits = settings.limits
    args = [f"--parallel={settings.parallel}", f"--threads={settings.threads}"]
    args += [f"--max-tokens={limits.max_tokens}", f"--queue={limits.max_queue}"]
    args.append(f"--max-body-kib={limits.max_body_bytes // 1024}")
    if settings.ctx is not None:
        args.append(f"--ctx={settings.ctx}")
    args += [f"--cors-origin={origin}" for origin in settings.cors_origins]
    if settings.audit_log:
        args.append(f"--audit-log={workdir / settings.audit_log}")
    if settings.audit_content:
        args.append("--audit-content")
    if settings.audit_best_effort:
        args.append("--audit-best-effort")
    args += [f"--trusted-proxy={cidr}" for cidr in settings.trusted_proxies]
    args.append(f"--header-timeout={limits.header_timeout_s}")
    args.append(f"--max-connections={limits.max_connections}")
    return args


@dataclass
class ServerProcess:
    """A running `python -m sovcli serve` and where to reach it."""

    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log_path: Path
    audit_path: Path | None
    model_id: str = ""  # the id of the (first) model: the path given on the command line
    alias: str = ""  # another name it answers to: the file stem

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return self.url + "/v1"

    def log(self) -> str:
        """Everything the server wrote on stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it to exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class AppServer:
    """`create_app` with fake engines, run by uvicorn in a thread: real HTTP on loopback."""

    settings: ServerSettings
    factory: FakeEngineFactory
    url: str = ""
    audit_path: Path | None = None
    fatal: list[Exception] = field(default_factory=list)
    running: ClassVar[list[AppServer]] = []  # started and not stopped yet

    def __post_init__(self) -> None:
        from sovcli.server.app import create_app
        from sovcli.server.runner import bind_socket, uvicorn_server

        self.app = create_app(
            self.settings, engine_factory=self.factory, on_fatal=self.fatal.append
        )
        self._sock = bind_socket(self.settings.host, 0)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.audit_path = self.settings.audit_log
        self.server = uvicorn_server(self.app, self.settings)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        AppServer.running.append(self)
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.005)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return self.url + "/v1"

    @property
    def model_id(self) -> str:
        """The id of the first served model."""
        return self.settings.models[0].ref

    @property
    def alias(self) -> str:
        """Another name the first model answers to."""
        return self.settings.models[0].aliases[0]

    def engine(self, model_id: str | None = None) -> FakeEngine:
        """The fake engine serving `model_id` (default: the first model)."""
        return self.factory.engines[model_id or self.model_id]

    def wait_ready(self, timeout: float = 10) -> AppServer:
        """Return once /health says every model is loaded."""
        deadline = time.monotonic() + timeout
        while request(self.url, "GET", "/health").status != 200:
            if self.fatal or time.monotonic() > deadline:
                raise RuntimeError(f"models not loaded: {self.fatal}")
            time.sleep(0.005)
        return self

    @property
    def idle(self) -> bool:
        """No request in flight (the request log is written just before a request leaves)."""
        return self.app.state.sovcli.metrics.in_flight == 0

    def stop(self) -> None:
        """Shut uvicorn down (lifespan closes the engines) and wait for its thread."""
        if self in AppServer.running:
            AppServer.running.remove(self)
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()


def fake_models(*stems: str) -> tuple[ServedModel, ...]:
    """Served models named like `sovcli serve /models/STEM.gguf` names them."""
    return tuple(
        ServedModel(ref=f"/models/{stem}.gguf", path=f"/models/{stem}.gguf", aliases=(stem,))
        for stem in stems
    )


def start_fake_server(
    settings: ServerSettings,
    workdir: Path,
    factory: FakeEngineFactory | None = None,
    *,
    step_s: float = 0.001,
) -> AppServer:
    """`settings` in-process over the fake engine (576-dim embeddings, like the real model),
    one token every `step_s` seconds per sequence."""
    workdir.mkdir(parents=True, exist_ok=True)
    factory = factory or FakeEngineFactory(FAKE_REPLIES, n_embd=576, step_s=step_s)
    return AppServer(placed(settings, fake_models("smollm2-fake"), workdir), factory).wait_ready()


def launch(
    request: pytest.FixtureRequest,
    settings: ServerSettings,
    workdir: Path,
    *,
    fake_step_s: float = 0.001,
) -> AppServer | ServerProcess:
    """Start `settings` on the tier `request.param` names; stopped when the fixture ends."""
    if request.param == FAKE:
        server: AppServer | ServerProcess = start_fake_server(settings, workdir, step_s=fake_step_s)
    else:
        model = request.getfixturevalue("smollm2_gguf")
        keys = ",".join(f"{k.key_id}:{k.secret}" for k in settings.api_keys)
        server = start_server(model, workdir, *cli_args(settings, workdir), keys=keys or None)
    request.addfinalizer(server.stop)
    return server


def server_env(home: Path, keys: str | None) -> dict[str, str]:
    """The environment of a server subprocess: isolated home, no hub, optional API keys."""
    env = dict(os.environ)
    env.update(
        SOVCLI_HOME=str(home / "sovcli-home"),
        SOVCLI_CATALOG=str(home / "user-models.toml"),
        HF_HOME=str(home / "hf-home"),
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.pop("SOVCLI_DEBUG", None)
    env.pop("SOVCLI_API_KEYS", None)
    if keys:
        env["SOVCLI_API_KEYS"] = keys
    return env


def start_server(
    model: Path, workdir: Path, *extra: str, keys: str | None = None, wait_ready: bool = True
) -> ServerProcess:
    """Start `sovcli serve MODEL --port 0 ...`, wait until it listens (and is ready)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    audit_path = next(
        (Path(arg.split("=", 1)[1]) for arg in extra if arg.startswith("--audit-log=")), None
    )
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sovcli", "serve", str(model), "--port", "0", *extra],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=server_env(workdir, keys),
        )
    deadline = time.monotonic() + 60
    url = None
    while time.monotonic() < deadline and url is None:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{log_path.read_text()}")
        match = LISTENING.search(log_path.read_text(errors="replace"))
        url = match.group(1) if match else None
        time.sleep(0.05)
    if url is None:
        process.kill()
        raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
    server = ServerProcess(
        process=process,
        url=url,
        log_path=log_path,
        audit_path=audit_path,
        model_id=str(model),
        alias=model.stem,
    )
    if wait_ready:
        while time.monotonic() < deadline:
            try:
                if request(url, "GET", "/health").status == 200:
                    return server
            except OSError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{server.log()}")
            time.sleep(0.1)
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server not ready:\n{server.log()}")
    return server


@dataclass
class RawResponse:
    """Status, headers (lower-case names) and body of a plain HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        """The body as JSON."""
        return json.loads(self.body)


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> RawResponse:
    """One HTTP request with the standard library (no client-side magic)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def sse_events(body: bytes) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded (`[DONE]` kept as a string)."""
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


def open_stream(
    url: str, model: str, max_tokens: int, *, events: int, api_key: str | None = None
) -> socket.socket:
    """A streamed chat request for a long story on a raw socket, read until `events` events
    have arrived (so the sequence is decoding); the caller closes it to disconnect."""
    parts = urlsplit(url)
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
        }
    ).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"{auth}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200"), received
    while received.count(b"data: ") < events:
        received += sock.recv(65536)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus exposition, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None


def wait_until(condition, timeout: float = 10, step: float = 0.01) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def audit_records(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log (each line must be whole JSON)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for_records(path: Path, count: int, timeout: float = 10, **fields: Any) -> list[dict]:
    """The records with these field values, once there are at least `count` of them."""

    def matching() -> list[dict]:
        return [r for r in audit_records(path) if all(r.get(k) == v for k, v in fields.items())]

    wait_until(lambda: len(matching()) >= count, timeout=timeout)
    return matching()


def chat_body(model: str, content: str, **extra: Any) -> dict[str, Any]:
    """A short greedy chat request."""
    return {
        "model": model,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def assert_still_serves(server: Any) -> None:
    """A normal authenticated chat request still gets its answer."""
    body = chat_body(server.model_id, "Say hi.")
    assert request(server.url, "POST", "/v1/chat/completions", body, AUTH).status == 200
