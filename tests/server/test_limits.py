"""Queue limits, CORS, content auditing (both tiers) and graceful shutdown of a real
`sovcli serve` (`slow`: it signals the subprocess)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from serve_helpers import (
    TIERS,
    launch,
    open_stream,
    read_all,
    request,
    server_settings,
    start_server,
)

from sovcli.server.settings import Limits

ORIGIN = "https://chat.example.org"


@pytest.fixture(scope="module", params=TIERS)
def small_server(request, tmp_path_factory):
    """One sequence, no queue: a second concurrent request must get a 503."""
    settings = server_settings(
        parallel=1,
        ctx=1024,
        limits=Limits(max_queue=0),
        cors_origins=(ORIGIN,),
        audit_log=Path("audit.jsonl"),
        audit_content=True,
    )
    # On the fake engine, the 400-token stream lasts 2 s: long enough to find the server busy.
    return launch(request, settings, tmp_path_factory.mktemp("serve-small"), fake_step_s=0.005)


def test_full_queue_gets_503_with_retry_after(small_server):
    model = small_server.model_id
    sock = open_stream(small_server.url, model, 400, events=3)
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


def test_audit_content_writes_prompt_and_completion(small_server):
    client = openai.OpenAI(base_url=small_server.base_url, api_key="none", max_retries=5)
    reply = client.chat.completions.create(
        model=small_server.model_id,
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


@pytest.mark.slow
def test_sigterm_finishes_short_streams_and_exits(smollm2_gguf, tmp_path):
    proc = start_server(smollm2_gguf, tmp_path, "--parallel", "2", "--ctx", "512", "--threads", "1")
    model = str(smollm2_gguf)
    short = open_stream(proc.url, model, 24, events=3)
    long = open_stream(proc.url, model, 500, events=3)
    results: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda: results.__setitem__("short", read_all(short))),
        threading.Thread(target=lambda: results.__setitem__("long", read_all(long))),
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
