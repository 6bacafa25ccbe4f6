"""`sovcli ps` and `sovcli stop` in a subprocess against a live server: the fake engine
in-process (fast), and the real model behind `sovcli serve --keep-alive` (slow), where
on-demand loading and keep-alive unloading are observed in `sovcli ps`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ollama
import pytest
from fake_engine import FakeEngineFactory
from serve_helpers import (
    API_KEY,
    FAKE_REPLIES,
    AppServer,
    fake_models,
    open_stream,
    placed,
    process_rss_mb,
    request,
    server_settings,
    start_server,
    wait_until,
)

from sovcli.server.settings import ApiKey

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def sovcli(*args: str, key: str | None = API_KEY) -> subprocess.CompletedProcess:
    """`python -m sovcli ARGS` with the API key in SOVCLI_API_KEY."""
    env = dict(os.environ)
    env.pop("SOVCLI_API_KEY", None)
    if key is not None:
        env["SOVCLI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _loaded(url: str) -> list[str]:
    return [m["name"] for m in request(url, "GET", "/api/ps", headers=AUTH).json()["models"]]


@pytest.fixture
def two_models(tmp_path):
    settings = server_settings(parallel=2, ctx=512, api_keys=(ApiKey("team-a", API_KEY),),
                               keep_alive_s=None)  # fmt: skip
    settings = placed(settings, fake_models("alpha", "beta"), tmp_path)
    server = AppServer(settings, FakeEngineFactory(FAKE_REPLIES, step_s=0.05)).wait_ready()
    yield server
    server.stop()


def test_ps_and_stop_in_process(two_models):
    """The fast tier's check of both commands (typer's runner, same error mapping)."""
    from typer.testing import CliRunner

    from sovcli.cli.main import app

    runner, url, env = CliRunner(), two_models.url, {"SOVCLI_API_KEY": API_KEY}
    table = runner.invoke(app, ["ps", "--url", url], env=env)
    rows = [line.split() for line in table.stdout.splitlines()]
    assert table.exit_code == 0 and ["/models/beta.gguf", "ready", "268", "MB", "0/2"] in [
        row[:5] for row in rows
    ]
    stopped = runner.invoke(app, ["stop", "beta", "--url", url], env=env)
    assert stopped.exit_code == 0 and _loaded(url) == ["/models/alpha.gguf"]
    listed = runner.invoke(app, ["ps", "--url", url, "--json"], env=env)
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == ["/models/alpha.gguf"]
    refused = runner.invoke(app, ["ps", "--url", url], env={"SOVCLI_API_KEY": "wrong"})
    assert refused.exit_code == 6


@pytest.mark.slow  # seconds: a sovcli process per call
def test_ps_shows_what_the_server_holds(two_models):
    url = two_models.url + "/v1"  # the URL a client is configured with works too
    table = sovcli("ps", "--url", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "SIZE", "SLOTS", "QUEUE", "CONTEXT", "UNTIL"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"/models/alpha.gguf", "/models/beta.gguf"}
    alpha = rows["/models/alpha.gguf"]
    assert alpha[1] == "ready" and "0/2" in alpha and "512" in alpha and alpha[-1] == "forever"
    listed = json.loads(sovcli("ps", "--url", two_models.url, "--json").stdout)
    assert [m["name"] for m in listed["models"]] == ["/models/alpha.gguf", "/models/beta.gguf"]
    assert listed["models"][0]["sovcli"]["slots_free"] == 2


@pytest.mark.slow  # seconds: a sovcli process per call
def test_stop_unloads_now_or_when_idle(two_models):
    url = two_models.url
    stopped = sovcli("stop", "alpha", "--url", url)
    assert stopped.returncode == 0 and "unloaded /models/alpha.gguf" in stopped.stderr
    assert _loaded(url) == ["/models/beta.gguf"]
    assert "was not loaded" in sovcli("stop", "alpha", "--url", url).stderr
    # A busy model unloads as soon as its requests end.
    sock = open_stream(url, "beta", 400, events=3, api_key=API_KEY)
    try:
        busy = sovcli("stop", "beta", "--url", url)
        assert busy.returncode == 0 and "busy" in busy.stderr
        assert "/models/beta.gguf" in _loaded(url)
    finally:
        sock.close()
    assert wait_until(lambda: _loaded(url) == [], timeout=10)
    # The next request loads it again.
    client = ollama.Client(host=url, headers=AUTH)
    assert client.generate(model="alpha", prompt="Hi", options={"num_predict": 4}).done
    assert _loaded(url) == ["/models/alpha.gguf"]


@pytest.mark.slow  # seconds: a sovcli process per call
def test_ps_and_stop_errors_are_one_line(two_models):
    wrong = sovcli("stop", "alpha", "--url", two_models.url, key="wrong-key")
    assert wrong.returncode == 6 and "refused the API key" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "SOVCLI_API_KEY" in wrong.stderr
    missing = sovcli("stop", "no-such-model", "--url", two_models.url)
    assert missing.returncode == 4 and "no-such-model" in missing.stderr
    nobody = sovcli("ps", "--url", "http://127.0.0.1:9")
    assert nobody.returncode == 5 and "cannot reach" in nobody.stderr
    assert sovcli("ps", "--url", "ftp://x").returncode == 2


@pytest.mark.slow
def test_real_server_loads_on_demand_and_unloads_when_idle(smollm2_gguf, tmp_path):
    server = start_server(smollm2_gguf, tmp_path, "--keep-alive", "1s", "--parallel", "2",
                          "--ctx", "512", "--threads", "1", keys=f"team-a:{API_KEY}")  # fmt: skip
    try:
        name = str(smollm2_gguf)
        assert wait_until(lambda: _loaded(server.url) == [], timeout=60)  # idle 1 s: unloaded
        assert "no model loaded" in sovcli("ps", "--url", server.url).stdout
        client = ollama.Client(host=server.url, headers=AUTH, timeout=120)
        messages = [{"role": "user", "content": "Hi"}]
        options = {"temperature": 0, "num_predict": 8}
        reply = client.chat(model=smollm2_gguf.stem, messages=messages, options=options,
                            keep_alive="10m")  # fmt: skip
        assert reply.done and reply.load_duration > 0  # loaded by this request
        shown = sovcli("ps", "--url", server.url)
        assert shown.returncode == 0 and name in shown.stdout and "0/2" in shown.stdout
        entry = json.loads(sovcli("ps", "--url", server.url, "--json").stdout)["models"][0]
        assert entry["sovcli"]["loads"] == 2 and entry["sovcli"]["keep_alive_s"] == 600
        rss_loaded = process_rss_mb(server.process.pid)
        assert sovcli("stop", smollm2_gguf.stem, "--url", server.url).returncode == 0
        assert _loaded(server.url) == []
        rss_unloaded = process_rss_mb(server.process.pid)
        # A request without keep_alive gets the server's --keep-alive again.
        assert client.chat(model=smollm2_gguf.stem, messages=messages, options=options).done
        assert wait_until(lambda: _loaded(server.url) == [], timeout=60)
        assert wait_until(lambda: server.log().count("(idle)") == 2)  # logged once closed
        print(f"server RSS: {rss_loaded:.0f} MB loaded, {rss_unloaded:.0f} MB after stop")
    finally:
        server.stop()
