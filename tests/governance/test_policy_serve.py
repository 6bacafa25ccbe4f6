"""The site policy at the server: a model it refuses gets a 403 in OpenAI's error shape.

The server runs in this process over the fake engine (real HTTP on loopback, the official
openai client), serving every installed model on demand (`all_installed`): the real
SmolLM2 is allowed, a second model is not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from .policy_support import audit_records, write_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from fake_engine import FakeEngineFactory
from serve_helpers import FAKE_REPLIES, AppServer, server_settings

openai = pytest.importorskip("openai")
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server(smollm2_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A server of every installed model under a policy that allows smollm2-135m only."""
    from store.conftest import make_gguf

    from sovcli.sources.local import import_gguf

    import_gguf(make_gguf(tmp_path / "tiny-Q8_0.gguf", file_type=7), name="tiny")
    policy = write_policy(tmp_path / "etc", '[models]\nallow = ["smollm2-135m"]\n')
    monkeypatch.setenv("SOVCLI_POLICY", str(policy))
    factory = FakeEngineFactory(FAKE_REPLIES, n_embd=576)
    app = AppServer(server_settings(all_installed=True), factory).wait_ready()
    yield app, policy
    app.stop()


def test_a_denied_model_gets_403_in_openais_shape(server, isolated_env: Path) -> None:
    app, policy = server
    client = openai.OpenAI(base_url=app.base_url, api_key="unused", max_retries=6)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="tiny:Q8_0", messages=HELLO, max_tokens=8)
    assert refused.value.status_code == 403
    raw = httpx.post(
        f"{app.base_url}/chat/completions",
        json={"model": "tiny:Q8_0", "messages": HELLO, "max_tokens": 8},
        timeout=30,
    )
    assert raw.status_code == 403
    error = raw.json()["error"]
    assert set(raw.json()) == {"error"}
    assert error["type"] == "request_forbidden" and error["code"] == "policy_denied"
    assert error["param"] is None
    assert error["message"].startswith(
        f"policy {policy} denies serve of tiny:Q8_0: rule models.allow: "
    )
    allowed = client.chat.completions.create(model="smollm2-135m", messages=HELLO, max_tokens=8)
    assert allowed.choices[0].message.content
    decisions = [(r["decision"], r["model"]) for r in audit_records(isolated_env)]
    if decisions:  # the audit trail is on
        assert ("deny", "tiny:Q8_0") in decisions
        assert ("allow", "smollm2-135m:Q4_1") in decisions


def test_the_server_keeps_serving_after_refusals(server) -> None:
    app, _policy = server
    client = openai.OpenAI(base_url=app.base_url, api_key="unused", max_retries=6)
    for _ in range(3):
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="tiny:Q8_0", prompt="hi", max_tokens=4)
    done = client.completions.create(model="smollm2-135m:Q4_1", prompt="hi", max_tokens=4)
    assert done.choices[0].text


def test_a_policy_changed_while_serving_applies_at_the_next_load(
    smollm2_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    from dataclasses import replace

    from sovcli.server.registry import served_model

    etc = tmp_path / "etc"
    policy = write_policy(etc, '[models]\nallow = ["smollm2-135m"]\n')
    monkeypatch.setenv("SOVCLI_POLICY", str(policy))
    settings = replace(
        server_settings(keep_alive_s=0.3), models=(served_model(smollm2_model, "smollm2-135m"),)
    )
    app = AppServer(settings, FakeEngineFactory(FAKE_REPLIES, n_embd=576)).wait_ready()
    try:
        client = openai.OpenAI(base_url=app.base_url, api_key="unused", max_retries=6)
        done = client.completions.create(model="smollm2-135m", prompt="hi", max_tokens=4)
        assert done.choices[0].text
        write_policy(etc, '[models]\nallow = ["another-model"]\n')  # the site changes its mind
        handle = app.app.state.sovcli.registry.handles[0]
        deadline = time.monotonic() + 30
        while handle.state != "unloaded" and time.monotonic() < deadline:  # keep-alive expiry
            time.sleep(0.05)
        assert handle.state == "unloaded"
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.completions.create(model="smollm2-135m", prompt="hi", max_tokens=4)
        assert "rule models.allow" in refused.value.message
    finally:
        app.stop()
