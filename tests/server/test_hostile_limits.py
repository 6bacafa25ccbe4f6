"""Issue #13, finding 6: no client can exhaust the server.

- a 212-byte `response_format` schema asking for millions of items is a 400 (grammar caps),
  and the grammar cache is bounded in bytes;
- a 3.9 MB prompt is tokenized off the event loop: `/health` answers at once meanwhile;
  one that overflows the context is refused after tokenizing only its beginning;
- clients trickling header bytes are dropped after the header timeout while others are
  served; at the connection cap, idle and slow connections make room for new ones; a body
  that does not arrive in time is a 408; oversized headers are a 400.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fake_engine import FakeEngineFactory
from serve_helpers import (
    AUTH,
    FAKE_REPLIES,
    AppServer,
    ServerProcess,
    assert_still_serves,
    chat_body,
    process_rss_mb,
    request,
    server_settings,
    start_fake_server,
)

from sovcli.engine.grammar import MAX_REPETITION, check_schema, json_schema_to_gbnf
from sovcli.errors import UsageError
from sovcli.server.grammars import GrammarCache
from sovcli.server.settings import Limits

# 212 bytes of JSON: three million integers (~54 MB of grammar before the caps).
MILLIONS_OF_ITEMS = {
    "type": "object",
    "properties": {
        "values": {"type": "array", "minItems": 3_000_000, "items": {"type": "integer"}},
        "name": {"type": "string"},
    },
    "required": ["values", "name"],
}


LONG_TEXT = {"type": "string", "maxLength": 900}


def schema_format(schema: dict) -> dict:
    """`response_format` for a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def connect(url: str) -> socket.socket:
    """A raw TCP connection to the server."""
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


# ---- grammar caps --------------------------------------------------------------------------
def test_schema_with_millions_of_items_is_a_400(hostile_server):
    rss_before = None
    if isinstance(hostile_server, ServerProcess):
        rss_before = process_rss_mb(hostile_server.process.pid)
    for _ in range(6):
        body = chat_body(hostile_server.model_id, "Numbers, please.")
        body["response_format"] = schema_format(MILLIONS_OF_ITEMS)
        started = time.monotonic()
        reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
        assert reply.status == 400
        assert time.monotonic() - started < 2
        error = reply.json()["error"]
        assert error["param"] == "response_format"
        assert "'minItems' is 3000000, above the limit of 1000" in error["message"]
    if rss_before is not None:  # was 265 -> 945 MB after 6 requests
        assert process_rss_mb(hostile_server.process.pid) - rss_before < 30
    # A schema at the limits is accepted, and llama.cpp takes its grammar.
    at_limit = {
        "type": "object",
        "properties": {"word": {"type": "string", "maxLength": MAX_REPETITION}},
        "required": ["word"],
    }
    body = chat_body(hostile_server.model_id, "One word as JSON.", max_tokens=12)
    body["response_format"] = schema_format(at_limit)
    assert request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH).status == 200


def test_forced_tool_call_with_a_huge_schema_is_a_400(hostile_server):
    tool = {
        "type": "function",
        "function": {
            "name": "spell",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "minLength": 10**7}},
            },
        },
    }
    body = chat_body(hostile_server.model_id, "Spell it.", tools=[tool], tool_choice="required")
    reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400
    assert reply.json()["error"]["param"] == "tools"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "maxLength": 5000}, "'maxLength' is 5000"),
        ({"type": "string", "pattern": "^a{3000000}$"}, "the pattern repeats 3000000 times"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(300)}},
            "300 properties",
        ),
        (
            {"type": "object", "properties": {f"p{i}": dict(LONG_TEXT) for i in range(30)}},
            "add up to over 20000",
        ),
        (
            {"$ref": "#/examples/0", "examples": [{"type": "array", "minItems": 10**6}]},
            "'minItems' is 1000000",
        ),
        ({"type": "array", "minItems": "3"}, "must be a non-negative integer"),
        (
            {"type": "string", "enum": [f"value number {i} " * 10 for i in range(10_000)]},
            "bytes of grammar",
        ),
    ],
    ids=["maxLength", "pattern", "properties", "total", "ref", "type", "size"],
)
def test_schema_caps(schema, message):
    with pytest.raises(UsageError, match=message):
        json_schema_to_gbnf(schema)


def test_deep_schema_is_refused_before_conversion():
    schema: dict = {"type": "object"}
    inner = schema
    for _ in range(40):
        inner["properties"] = {"x": {"type": "object"}}
        inner = inner["properties"]["x"]
    with pytest.raises(UsageError, match="nest more than 32 levels"):
        check_schema(schema)
    # A property named like a keyword is a name, not a bound.
    check_schema({"type": "object", "properties": {"minItems": {"type": "integer"}}})


def test_grammar_cache_is_bounded_in_bytes():
    cache = GrammarCache(max_bytes=40_000)
    grammars = []
    for n in range(60):
        schema = {"type": "string", "minLength": 100 + n, "maxLength": 400}
        grammars.append(cache.build(schema, "response_format"))
        assert cache.size <= cache.max_bytes
    assert len(cache) < 60
    assert sum(map(len, grammars)) > 3 * cache.max_bytes  # what an unbounded cache would hold
    again = {"type": "string", "minLength": 159, "maxLength": 400}
    assert cache.build(again, "response_format") is cache.build(again, "response_format")


# ---- the event loop stays free -----------------------------------------------------------
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_health_answers_while_a_huge_prompt_is_tokenized(tmp_path):
    """3.9 MB of prompt through a tokenizer taking 0.4 s per MB (a context of 2M tokens, so
    all of it is tokenized): /health is answered all along."""
    settings = server_settings(parallel=2, ctx=2_000_000, limits=Limits(max_body_bytes=8 << 20))
    factory = FakeEngineFactory(FAKE_REPLIES, n_embd=576, tokenize_s_per_mb=0.4)
    server = start_fake_server(settings, tmp_path, factory)
    body = json.dumps(chat_body(server.model_id, "word " * 780_000)).encode()
    result: dict = {}

    def big() -> None:
        started = time.monotonic()
        reply = request(server.url, "POST", "/v1/chat/completions", body)
        result.update(status=reply.status, body=reply.json(), took=time.monotonic() - started)

    worker = threading.Thread(target=big)
    try:
        worker.start()
        time.sleep(0.3)  # the body is in and being tokenized
        latencies = []
        while worker.is_alive() and len(latencies) < 200:
            started = time.monotonic()
            assert request(server.url, "GET", "/health").status == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        worker.join(60)
    finally:
        server.stop()
    assert result["status"] == 400
    assert result["body"]["error"]["code"] == "context_length_exceeded"
    assert result["took"] > 1.4  # the slow tokenizer did run all that time
    assert len(latencies) >= 3  # /health was asked while the prompt was being tokenized
    assert max(latencies) < 0.5, latencies  # was 1.5 s late, every client frozen


def test_oversized_prompt_is_refused_without_tokenizing_it_all(hostile_server):
    """3.9 MB against a 1024-token context: its first 16 KB already overflow, so the rest is
    never tokenized (the fake tokenizer would take 1.6 s, the real one ~1.5 s)."""
    body = json.dumps(chat_body(hostile_server.model_id, "word " * 780_000)).encode()
    started = time.monotonic()
    reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in error["message"]
    assert "first 16384 characters alone" in error["message"]
    assert time.monotonic() - started < 1.2
    assert_still_serves(hostile_server)


# ---- connections -----------------------------------------------------------------------------
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_clients_trickling_headers_are_dropped_and_others_served(hostile_server):
    """60 clients send a header line every 0.3 s (forever): each is dropped once its 1 s
    header timeout passes; a normal client is served all along."""
    socks = [connect(hostile_server.url) for _ in range(60)]
    for sock in socks:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.01)
    trickling = threading.Event()
    trickling.set()
    served: list[tuple[int, float]] = []

    def normal_client() -> None:
        while trickling.is_set():
            t0 = time.monotonic()
            body = chat_body(hostile_server.model_id, "Say hi.")
            reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
            served.append((reply.status, time.monotonic() - t0))

    client = threading.Thread(target=normal_client)
    client.start()
    dropped: dict[int, bytes] = {}
    started = time.monotonic()
    while len(dropped) < len(socks) and time.monotonic() - started < 8:
        for index, sock in enumerate(socks):
            if index in dropped:
                continue
            try:
                dropped[index] = sock.recv(4096)  # a 408, or b"" once closed
            except TimeoutError:  # still open: one more header line
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    dropped[index] = b""
            except OSError:
                dropped[index] = b""
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    trickling.clear()
    client.join(30)
    for sock in socks:
        sock.close()
    assert len(dropped) == 60 and elapsed < 6  # not held for 70 s+
    assert sum(data.startswith(b"HTTP/1.1 408") for data in dropped.values()) >= 50
    assert served and {status for status, _ in served} == {200}
    assert max(took for _, took in served) < 3


def fresh_server(tmp_path: Path, **limits) -> AppServer:
    """An in-process server with these limits."""
    return start_fake_server(
        server_settings(parallel=2, ctx=1024, limits=Limits(**limits)), tmp_path
    )


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_connection_cap_makes_room_for_a_real_request(tmp_path):
    server = fresh_server(tmp_path, max_connections=20, header_timeout_s=30)
    try:
        idle = [connect(server.url) for _ in range(40)]
        time.sleep(0.2)
        started = time.monotonic()
        reply = request(server.url, "GET", "/v1/models")
        assert reply.status == 200 and time.monotonic() - started < 2
        time.sleep(0.2)
        closed = 0
        for sock in idle:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:  # still open
                pass
            except OSError:
                closed += 1
            sock.close()
        assert closed >= 20  # the oldest idle connections were closed to stay at 20
    finally:
        server.stop()


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_slow_body_gets_408_and_big_headers_431(tmp_path):
    server = fresh_server(tmp_path, body_timeout_s=0.5)
    try:
        sock = connect(server.url)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"messages": '
        )
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        sock.close()
        big = request(server.url, "GET", "/v1/models", headers={"X-Big": "y" * 20_000})
        assert big.status == 431  # in one piece; trickled, h11 stops reading at 16 KiB (400)
        assert request(server.url, "GET", "/v1/models").status == 200
    finally:
        server.stop()
