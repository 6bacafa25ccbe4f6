"""Fixtures: the test server, in-process on the fake engine (fast) or as a real `sovcli serve`
subprocess with the SmolLM2 model (`slow`), on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fake_engine import FakeEngineFactory
from serve_helpers import (
    API_KEY,
    FAKE,
    FAKE_REPLIES,
    OTHER_KEY,
    TIERS,
    AppServer,
    launch,
    server_settings,
    start_fake_server,
    wait_until,
)

from sovcli.server.settings import ApiKey, Limits

# 8 parallel sequences, small context, keys, audit log, small caps.
MAIN_SETTINGS = server_settings(
    parallel=8,
    ctx=1024,
    limits=Limits(max_body_bytes=64 * 1024, max_tokens=512),
    api_keys=(ApiKey("team-a", API_KEY), ApiKey("team-b", OTHER_KEY)),
    audit_log=Path("audit.jsonl"),
)


HOSTILE_SETTINGS = server_settings(
    parallel=2,
    ctx=1024,
    limits=Limits(
        max_body_bytes=8 * 1024 * 1024, max_tokens=256, header_timeout_s=1.0, body_timeout_s=1.0
    ),
    api_keys=(ApiKey("team-a", API_KEY),),
    audit_log=Path("audit.jsonl"),
    audit_content=True,
)


@pytest.fixture(scope="module", params=TIERS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One server per module and tier."""
    return launch(request, MAIN_SETTINGS, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module", params=TIERS)
def hostile_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A server for hostile traffic: keys, content audit, 1 s header timeout, 8 MB bodies;
    on the fake tier its tokenizer takes 0.4 s per MB of text, like a slow real one."""
    workdir = tmp_path_factory.mktemp("serve-hostile")
    if request.param != FAKE:
        return launch(request, HOSTILE_SETTINGS, workdir)
    factory = FakeEngineFactory(FAKE_REPLIES, n_embd=576, tokenize_s_per_mb=0.4)
    server = start_fake_server(HOSTILE_SETTINGS, workdir, factory)
    request.addfinalizer(server.stop)
    return server


def log_reader(server, capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Reads the request log: the subprocess's stderr file, or (in-process) what this test
    captured on stderr so far."""
    if not isinstance(server, AppServer):
        return server.log
    seen: list[str] = []

    def read() -> str:
        seen.append(capsys.readouterr().err)
        return "".join(seen)

    return read


@pytest.fixture
def server_log(server, capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """The request log of `server`."""
    return log_reader(server, capsys)


@pytest.fixture
def hostile_log(hostile_server, capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """The request log of `hostile_server`."""
    return log_reader(hostile_server, capsys)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_setup(item):
    yield
    _let_request_logs_land()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item):
    yield
    _let_request_logs_land()


def _let_request_logs_land() -> None:
    """An in-process server logs a request just after its response: wait for those lines
    before the phase ends, so they are captured with the test that made the request."""
    for app_server in list(AppServer.running):
        wait_until(lambda s=app_server: s.idle, timeout=2)
