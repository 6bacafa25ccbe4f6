"""Fixtures: the test server, in-process on the fake engine (fast) or as a real `sovcli serve`
subprocess with the SmolLM2 model (`slow`), on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from serve_helpers import (
    API_KEY,
    OTHER_KEY,
    TIERS,
    AppServer,
    launch,
    server_settings,
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


@pytest.fixture(scope="module", params=TIERS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One server per module and tier."""
    return launch(request, MAIN_SETTINGS, tmp_path_factory.mktemp("serve"))


@pytest.fixture
def server_log(server, capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Reads the request log: the subprocess's stderr file, or (in-process) what this test
    captured on stderr so far."""
    if not isinstance(server, AppServer):
        return server.log
    seen: list[str] = []

    def read() -> str:
        seen.append(capsys.readouterr().err)
        return "".join(seen)

    return read


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
