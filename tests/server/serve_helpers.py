"""Helpers for the server tests: start `sovcli serve` as a subprocess, plain HTTP, metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
LISTENING = re.compile(r"serving .* at (http://127\.0\.0\.1:\d+)/v1")


@dataclass
class ServerProcess:
    """A running `python -m sovcli serve` and where to reach it."""

    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log_path: Path
    audit_path: Path | None

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
    audit_path = workdir / "audit.jsonl" if "--audit-log" in extra else None
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
    server = ServerProcess(process=process, url=url, log_path=log_path, audit_path=audit_path)
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


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus exposition, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None
