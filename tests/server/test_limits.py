"""Queue limits, CORS, content auditing and graceful shutdown of a real `sovcli serve`."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import openai
import pytest
from serve_helpers import request, start_server

ORIGIN = "https://chat.example.org"


@pytest.fixture(scope="module")
def small_server(smollm2_gguf, tmp_path_factory):
    """One sequence, no queue: a second concurrent request must get a 503."""
    workdir = tmp_path_factory.mktemp("serve-small")
    proc = start_server(
        smollm2_gguf,
        workdir,
        "--parallel",
        "1",
        "--queue",
        "0",
        "--ctx",
        "1024",
        "--threads",
        "1",
        "--cors-origin",
        ORIGIN,
        "--audit-log",
        str(workdir / "audit.jsonl"),
        "--audit-content",
    )
    yield proc
    proc.stop()


def _open_stream(url: str, model: str, max_tokens: int) -> socket.socket:
    parts = urlsplit(url)
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
        }
    ).encode()
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200"), received
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_full_queue_gets_503_with_retry_after(small_server, smollm2_gguf):
    model = str(smollm2_gguf)
    sock = _open_stream(small_server.url, model, 400)
    try:
        busy = request(
            small_server.url,
            "POST",
            "/v1/completions",
            {"model": model, "prompt": "Hi", "max_tokens": 4},
        )
        assert busy.status == 503
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["type"] == "server_error"
    finally:
        sock.close()
    # Once the stream is gone, the slot serves again (the client retries on 503).
    client = openai.OpenAI(base_url=small_server.base_url, api_key="none", max_retries=5)
    reply = client.completions.create(model=model, prompt="Hi", max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens > 0


def test_cors_only_for_given_origins(small_server):
    allowed = request(
        small_server.url,
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = request(small_server.url, "GET", "/v1/models", headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in other.headers


def test_audit_content_writes_prompt_and_completion(small_server, smollm2_gguf):
    client = openai.OpenAI(base_url=small_server.base_url, api_key="none", max_retries=5)
    reply = client.chat.completions.create(
        model=str(smollm2_gguf),
        messages=[{"role": "user", "content": "Say quokka."}],
        max_tokens=8,
        temperature=0,
    )
    wanted = [{"role": "user", "content": "Say quokka."}]
    record = None
    deadline = time.monotonic() + 10
    while record is None and time.monotonic() < deadline:
        records = [json.loads(x) for x in small_server.audit_path.read_text().splitlines()]
        record = next((r for r in records if r.get("prompt") == wanted), None)
        time.sleep(0.05)
    assert record is not None
    assert record["endpoint"] == "/v1/chat/completions"
    assert record["completion"] == reply.choices[0].message.content
    assert record["key_id"] is None


def test_sigterm_finishes_short_streams_and_exits(smollm2_gguf, tmp_path):
    proc = start_server(smollm2_gguf, tmp_path, "--parallel", "2", "--ctx", "512", "--threads", "1")
    model = str(smollm2_gguf)
    short = _open_stream(proc.url, model, 24)
    long = _open_stream(proc.url, model, 500)
    results: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda: results.__setitem__("short", _read_all(short))),
        threading.Thread(target=lambda: results.__setitem__("long", _read_all(long))),
    ]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    code = proc.stop(signal.SIGTERM, timeout=60)
    elapsed = time.monotonic() - started
    for reader in readers:
        reader.join(30)
    assert code == 0
    assert elapsed < 30  # never hangs: the grace period is 5 s
    assert b"data: [DONE]" in results["short"]
    assert "stopped" in proc.log()
    parts = urlsplit(proc.url)
    with pytest.raises(OSError):
        socket.create_connection((parts.hostname, parts.port), timeout=2)
