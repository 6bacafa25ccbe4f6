"""Issue #13, finding 5: audit records are never lost or forged.

- text that is not Unicode (a lone surrogate) is refused with a 400 and audited, and the
  audit log itself escapes any such text instead of dropping the record;
- when the audit log cannot be written (a full disk: a failing write in-process, a real
  file size limit in a server process), requests get a 503 instead of being served
  unaudited, and the log says what happened once it can be written again;
- X-Forwarded-For & co. are ignored unless the peer is a `--trusted-proxy`;
- control characters from the client (a `%0A` in the path, ANSI escapes) are escaped in
  the request log and the audit log; unauthenticated lines stay short.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from serve_helpers import (
    AUTH,
    AppServer,
    assert_still_serves,
    audit_records,
    chat_body,
    fake_models,
    request,
    server_settings,
    sse_events,
    start_fake_server,
    wait_for_records,
    wait_until,
)

from sovcli.errors import UsageError
from sovcli.server.audit import AuditLog
from sovcli.server.forwarded import ClientResolver
from sovcli.server.settings import Limits, trusted_networks

HERE = Path(__file__).resolve().parent


def _no_space(_fd: int, _data: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def fake_server(tmp_path: Path, **fields) -> AppServer:
    """A fresh in-process server with content auditing (for tests that break it)."""
    settings = server_settings(
        parallel=2, ctx=1024, audit_log=Path("audit.jsonl"), audit_content=True, **fields
    )
    return start_fake_server(settings, tmp_path)


# ---- text that is not Unicode ------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'"messages": [{"role": "user", "content": "caf\\ud800 quokka"}]',  # JSON escape
        b'"messages": [{"role": "user", "content": "caf\xed\xa0\x80 quokka"}]',  # CESU-8 bytes
        b'"messages": [{"role": "user", "content": "hi"}], "\\udfff": 1',  # in a key
    ],
    ids=["escape", "cesu8", "key"],
)
def test_lone_surrogate_is_a_400_and_audited(hostile_server, raw):
    path = hostile_server.audit_path
    before = len(wait_for_records(path, 0, status=400))
    body = b'{"model": "%s", "max_tokens": 8, ' % hostile_server.model_id.encode() + raw + b"}"
    reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400
    error = reply.json()["error"]
    assert "surrogate" in error["message"]
    assert len(wait_for_records(path, before + 1, status=400)) == before + 1
    # The server still answers the same client.
    assert_still_serves(hostile_server)


def test_audit_log_escapes_what_is_not_unicode_and_keeps_the_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, include_content=True)
    hostile = "caf\ud800 \x1b[2J\u2028fake line\x85\u202e\nend"
    assert log.write({"status": 200, "prompt": hostile, "completion": "ok"})
    assert log.write({"status": 200, "prompt": "second", "completion": "\udcff"})
    log.close()
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # strict: every byte is UTF-8
    lines = text.splitlines()
    assert len(lines) == 2  # no record split or dropped
    for forbidden in ("\x1b", "\u2028", "\x85", "\u202e"):
        assert forbidden not in text
    assert json.loads(lines[0])["prompt"] == hostile  # escapes are lossless
    assert json.loads(lines[1])["completion"] == "\udcff"


# ---- an audit log that cannot be written -------------------------------------------------
def test_unwritable_audit_log_fails_requests_with_503(tmp_path, capsys):
    server = fake_server(tmp_path)
    try:
        audit = server.app.state.sovcli.audit
        model = server.model_id
        first = request(server.url, "POST", "/v1/chat/completions", chat_body(model, "Say one."))
        assert first.status == 200
        audit.os_write = _no_space  # the disk is full from now on
        lost = request(server.url, "POST", "/v1/chat/completions", chat_body(model, "Say two."))
        assert lost.status == 503  # answered by the model, but not served unaudited
        assert lost.json()["error"]["code"] == "audit_unavailable"
        assert "No space left on device" in lost.json()["error"]["message"]
        refused = request(server.url, "POST", "/v1/completions", {"model": model, "prompt": "x"})
        assert refused.status == 503 and refused.headers["retry-after"]
        assert request(server.url, "GET", "/health").status == 200  # still serving
        audit.os_write = os.write  # space again
        again = request(server.url, "POST", "/v1/chat/completions", chat_body(model, "Say three."))
        assert again.status == 200
        records = audit_records(server.audit_path)
        by_prompt = {r["prompt"][0]["content"]: r for r in records if r.get("prompt")}
        assert list(by_prompt) == ["Say one.", "Say two.", "Say three."]
        withheld = by_prompt["Say two."]
        assert withheld["status"] == 503 and withheld["error"] == "audit_unavailable"
        gap = next(r for r in records if r.get("event") == "audit_gap")
        assert gap["refused_requests"] == 1 and gap["lost_records"] == 0
        served = [r for r in records if r.get("status") == 200]
        assert len(served) == 2  # every 200 a client saw has its record
        wait_until(lambda: server.idle)
        log = capsys.readouterr().err
        assert "cannot be written (No space left on device): requests get a 503" in log
        assert "is writable again" in log
    finally:
        server.stop()


def test_stream_ends_with_an_error_when_its_record_cannot_be_written(tmp_path):
    server = fake_server(tmp_path)
    try:
        audit = server.app.state.sovcli.audit
        audit.os_write = _no_space  # the log fails after the stream has started
        body = chat_body(server.model_id, "Tell me a long story.", stream=True, max_tokens=60)
        reply = request(server.url, "POST", "/v1/chat/completions", body)
        assert reply.status == 200
        events = sse_events(reply.body)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "audit_unavailable"
        assert any(e["choices"] for e in events[:-2])  # tokens went out before
        audit.os_write = os.write
        assert audit.ready()
        record = next(r for r in audit_records(server.audit_path) if r.get("stream"))
        assert record["status"] == 200 and record["error"] == "audit_unavailable"
    finally:
        server.stop()


def test_best_effort_serves_on_and_writes_the_records_later(tmp_path, capsys):
    server = fake_server(tmp_path, audit_best_effort=True)
    try:
        audit = server.app.state.sovcli.audit
        audit.os_write = _no_space
        statuses = [
            request(server.url, "POST", "/v1/chat/completions",
                    chat_body(server.model_id, f"Say {n}.")).status
            for n in range(3)
        ]  # fmt: skip
        assert statuses == [200, 200, 200]
        audit.os_write = os.write
        assert audit.ready()
        records = audit_records(server.audit_path)
        assert sum(r.get("status") == 200 for r in records) == 3  # none lost
        assert any(r.get("event") == "audit_gap" for r in records)
        wait_until(lambda: server.idle)
        assert "serving on without audit records" in capsys.readouterr().err
    finally:
        server.stop()


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_full_disk_in_a_server_process_fails_requests_not_records(tmp_path):
    """A real file size limit (RLIMIT_FSIZE) on a server process: once the audit log hits
    it, every answer is a 503, and every 200 the client saw has its record."""
    audit_path = tmp_path / "audit.jsonl"
    settings = {"audit_log": str(audit_path), "audit_content": True, "log_requests": False}
    limit = 6000

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "fake_serve.py"), json.dumps(settings)],
            stderr=log_file, stdout=subprocess.DEVNULL, preexec_fn=limit_file_size,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
    try:
        assert wait_until(lambda: "serving fake at" in log_path.read_text(), timeout=30)
        url = log_path.read_text().split("serving fake at ", 1)[1].split("/v1")[0]
        assert wait_until(lambda: request(url, "GET", "/health").status == 200)
        statuses = []
        for n in range(40):
            body = chat_body("smollm2-fake", f"Record number {n} please." + "x" * 100)
            statuses.append(request(url, "POST", "/v1/chat/completions", body).status)
        assert process.poll() is None  # never a crash
        assert statuses[0] == 200 and 503 in statuses
        first_refusal = statuses.index(503)
        assert set(statuses[first_refusal:]) == {503}  # not one served unaudited
        records = audit_records(audit_path)  # every line whole JSON (nothing half-written)
        assert audit_path.stat().st_size <= limit
        assert sum(r["status"] == 200 for r in records) == statuses.count(200)
        assert "cannot be written (File too large)" in log_path.read_text()
    finally:
        process.terminate()
        process.wait(30)


# ---- who sent the request ------------------------------------------------------------------
FORGED = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"}


def test_forwarded_for_headers_are_ignored_without_a_trusted_proxy(hostile_server, hostile_log):
    path = hostile_server.audit_path
    before = len(wait_for_records(path, 0, endpoint="/v1/models"))
    reply = request(hostile_server.url, "GET", "/v1/models", headers={**AUTH, **FORGED})
    assert reply.status == 200
    record = wait_for_records(path, before + 1, endpoint="/v1/models")[-1]
    assert record["client"].startswith("127.0.0.1:")
    assert "6.6.6.6" not in path.read_text()
    assert wait_until(lambda: "GET /v1/models 200" in hostile_log())
    assert "6.6.6.6" not in hostile_log()


def test_a_trusted_proxy_names_the_client(tmp_path):
    server = fake_server(tmp_path, trusted_proxies=("127.0.0.0/8",))
    try:
        # The leftmost entry was written by the client itself: only the proxy's is believed.
        headers = {"X-Forwarded-For": "1.1.1.1, 203.0.113.9"}
        assert request(server.url, "GET", "/v1/models", headers=headers).status == 200
        record = wait_for_records(server.audit_path, 1, endpoint="/v1/models")[-1]
        assert record["client"] == "203.0.113.9"
        assert record["proxy"].startswith("127.0.0.1:")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("10.0.0.5", {"x-forwarded-for": "6.6.6.6"}, "10.0.0.5:1"),  # peer not trusted
        ("127.0.0.1", {"x-forwarded-for": "6.6.6.6, 127.0.0.2"}, "6.6.6.6"),  # proxy chain
        ("127.0.0.1", {"x-forwarded-for": "6.6.6.6, junk"}, "127.0.0.1"),  # stops at junk
        ("127.0.0.1", {"forwarded": 'for="[2001:db8::17]:4711";proto=http'}, "2001:db8::17"),
        ("127.0.0.1", {"forwarded": "for=unknown"}, "127.0.0.1"),
        ("127.0.0.1", {"x-real-ip": "192.0.2.7"}, "192.0.2.7"),
        ("127.0.0.1", {}, "127.0.0.1:1"),
    ],
)
def test_client_resolver(peer, headers, client):
    resolver = ClientResolver(trusted_networks(("127.0.0.0/8",)))
    assert resolver.origin((peer, 1), headers).client == client


# ---- what clients write into the logs ----------------------------------------------------
FORGED_LINE = (
    "/v1/x%0A2030-01-01T00:00:00.000Z%206.6.6.6%20POST%20/v1/chat/completions%20200"
    "%20key=admin%1B%5B2J%E2%80%A8"
)


def test_control_characters_in_a_path_are_escaped(hostile_server, hostile_log):
    path = hostile_server.audit_path
    before = len(wait_for_records(path, 0, status=401))
    assert request(hostile_server.url, "GET", FORGED_LINE).status == 401
    assert wait_until(lambda: "/v1/x" in hostile_log())
    log = hostile_log()
    line = next(x for x in log.splitlines() if "/v1/x" in x)
    assert "/v1/x\\n2030-01-01T00:00:00.000Z 6.6.6.6" in line
    assert "\\x1b[2J\\u2028" in line
    assert not any(x.startswith("2030-01-01") for x in log.splitlines())
    assert "\x1b" not in log and "\u2028" not in log
    record = wait_for_records(path, before + 1, status=401)[-1]
    assert record["endpoint"].startswith("/v1/x\n2030")  # kept exactly, as JSON escapes
    raw = path.read_text(encoding="utf-8")
    assert "\x1b" not in raw and "\u2028" not in raw


def test_unauthenticated_long_paths_give_short_lines(hostile_server, hostile_log):
    path = hostile_server.audit_path
    before = len(wait_for_records(path, 0, status=401))
    assert request(hostile_server.url, "GET", "/" + "a" * 8000).status == 401
    record = wait_for_records(path, before + 1, status=401)[-1]
    assert record["endpoint"].endswith("...[+7745 chars]")
    assert max(len(line) for line in path.read_text().splitlines()) < 1500
    assert wait_until(lambda: "aaa...[+7745 chars] 401" in hostile_log())
    assert max(len(line) for line in hostile_log().splitlines()) < 1000


def test_bad_proxy_and_connection_settings_do_not_start():
    base = replace(server_settings(), models=fake_models("m"))
    with pytest.raises(UsageError, match="not an address or a CIDR"):
        replace(base, trusted_proxies=("10.0.0.0/33",)).validate()
    with pytest.raises(UsageError, match="max-connections"):
        replace(base, limits=Limits(max_connections=0)).validate()
