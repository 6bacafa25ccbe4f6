"""Several models in one server, each with its own engine, chosen by the `model` field; the
loading state and a model that fails to load."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import openai
import pytest
from fake_engine import FakeEngineFactory
from serve_helpers import (
    LISTENING,
    AppServer,
    fake_models,
    metric_value,
    placed,
    request,
    server_env,
    server_settings,
    wait_until,
)

from sovcli.errors import EngineError


def check_routing(url: str, first: str, second: str, names: tuple[str, ...]) -> None:
    """Both models are listed, answer to each of `names`, and are counted apart."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == [first, second]
    for name in names:
        reply = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
        )
        assert reply.choices[0].message.content
    metrics = request(url, "GET", "/metrics").body.decode()
    assert metric_value(metrics, "sovcli_parallel_slots", model=first) == 2
    assert metric_value(metrics, "sovcli_generated_tokens_total", model=first) > 0
    assert metric_value(metrics, "sovcli_generated_tokens_total", model=second) > 0
    # Without `model`, a server with two models cannot guess.
    missing = request(url, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert missing.status == 400


def test_two_fake_models_load_then_route_by_name(tmp_path):
    hold = threading.Event()
    settings = placed(server_settings(parallel=2, ctx=512), fake_models("alpha", "beta"), tmp_path)
    server = AppServer(settings, FakeEngineFactory(hold=hold))
    try:
        # While the models load, /health says so (and asks to retry); requests get a 503.
        health = request(server.url, "GET", "/health")
        assert health.status == 503
        assert health.json()["status"] == "loading"
        assert "retry-after" in health.headers
        card = request(server.url, "GET", "/v1/models/alpha").json()
        assert card["status"] == "loading" and "meta" not in card
        early = request(server.url, "POST", "/v1/completions", {"model": "beta", "prompt": "Hi"})
        assert early.status == 503 and "still loading" in early.json()["error"]["message"]
        hold.set()
        server.wait_ready()
        check_routing(
            server.url,
            "/models/alpha.gguf",
            "/models/beta.gguf",
            ("alpha", "beta", "/models/beta.gguf"),
        )
    finally:
        server.stop()
    assert all(engine.closed for engine in server.factory.engines.values())


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    settings = placed(server_settings(), fake_models("broken"), tmp_path)
    server = AppServer(settings, FakeEngineFactory(fail=EngineError("not a GGUF file")))
    try:
        assert wait_until(lambda: server.fatal)
        assert str(server.fatal[0]) == "not a GGUF file"
        health = request(server.url, "GET", "/health")
        assert health.status == 503
        assert health.json() == {
            "status": "error",
            "models": [{"id": "/models/broken.gguf", "status": "error"}],
        }
    finally:
        server.stop()


@pytest.mark.slow
def test_two_models_routed_by_name(smollm2_gguf, tmp_path):
    first = tmp_path / "alpha.gguf"
    second = tmp_path / "beta.gguf"
    shutil.copyfile(smollm2_gguf, first)
    shutil.copyfile(smollm2_gguf, second)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sovcli",
                "serve",
                str(first),
                str(second),
                "--port",
                "0",
                "--parallel",
                "2",
                "--ctx",
                "512",
                "--threads",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=server_env(tmp_path, None),
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            match = LISTENING.search(log_path.read_text())
            url = match.group(1) if match else None
            time.sleep(0.02)
        assert url is not None, log_path.read_text()
        # While the models load, /health says so (and asks to retry).
        health = request(url, "GET", "/health")
        if health.status == 503:
            assert health.json()["status"] == "loading"
            assert "retry-after" in health.headers
        while request(url, "GET", "/health").status != 200:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        check_routing(url, str(first), str(second), ("alpha", "beta", str(second)))
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
