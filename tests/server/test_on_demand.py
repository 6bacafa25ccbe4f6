"""Models loaded on first request and unloaded when idle (`--keep-alive` and each Ollama
request's `keep_alive`), within `--max-loaded` / `--memory-budget`, observed through
`/api/ps` (what `sovcli ps` shows). In-process servers on the fake engine; the real model
behind `sovcli serve` in test_ps_stop.py."""

from __future__ import annotations

import threading
from dataclasses import replace

import ollama
import openai
import pytest
from fake_engine import FakeEngineFactory
from serve_helpers import (
    API_KEY,
    FAKE_REPLIES,
    AppServer,
    fake_models,
    open_stream,
    placed,
    request,
    server_settings,
    wait_until,
)

from sovcli.errors import EngineError, UsageError
from sovcli.server.guarded import GuardedEngine
from sovcli.server.settings import ApiKey, ServedModel

AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEYS = (ApiKey("team-a", API_KEY),)
SHORT = {"temperature": 0, "num_predict": 8}


def _serve(tmp_path, models, **fields) -> AppServer:
    settings = placed(
        server_settings(parallel=2, ctx=512, api_keys=KEYS, **fields), models, tmp_path
    )
    server = AppServer(settings, FakeEngineFactory(FAKE_REPLIES, n_embd=576, step_s=0.02))
    return server.wait_ready()


def _ps(server) -> dict[str, dict]:
    """The models loaded now, by name, with sovcli's detail."""
    models = request(server.url, "GET", "/api/ps", headers=AUTH).json()["models"]
    return {m["name"]: m for m in models}


def _state(server, name: str) -> str | None:
    """`loading` or `ready` (ps lists both), None when not loaded."""
    return _ps(server).get(name, {}).get("sovcli", {}).get("state")


def _client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=60)


def test_idle_model_unloads_and_the_next_request_loads_it(tmp_path):
    server, name = _serve(tmp_path, fake_models("alpha"), keep_alive_s=0.6), "/models/alpha.gguf"
    try:
        assert wait_until(lambda: name not in _ps(server), timeout=10)  # --keep-alive 0.6 s
        assert wait_until(lambda: server.engine(name).closed)  # closed in a worker thread
        messages = [{"role": "user", "content": "Hi"}]
        reply = _client(server).chat(model="alpha", messages=messages, keep_alive=-1)
        assert reply.done and reply.load_duration >= 0
        loaded = _ps(server)[name]
        assert loaded["sovcli"]["loads"] == 2 and loaded["expires_at"] is None
        assert not wait_until(lambda: name not in _ps(server), timeout=1.5)  # kept: -1
    finally:
        server.stop()


def test_keep_alive_per_request(tmp_path):
    server, name = _serve(tmp_path, fake_models("alpha"), keep_alive_s=None), "/models/alpha.gguf"
    client, messages = _client(server), [{"role": "user", "content": "Hi"}]
    try:
        client.chat(model="alpha", messages=messages, options=SHORT, keep_alive="10m")
        entry = _ps(server)[name]
        assert entry["sovcli"]["keep_alive_s"] == 600 and entry["expires_at"]
        client.chat(model="alpha", messages=messages, options=SHORT, keep_alive="1s")
        assert wait_until(lambda: name not in _ps(server), timeout=10)
        # keep_alive 0: unloaded as soon as the request ends (streamed or not).
        parts = list(client.chat(model="alpha", messages=messages, options=SHORT, keep_alive=0,
                                 stream=True))  # fmt: skip
        assert parts[-1].done and name not in _ps(server)
        # An empty request loads the model; with keep_alive 0 it unloads it (`ollama stop`).
        loaded = client.generate(model="alpha", prompt="")
        assert loaded.done_reason == "load" and name in _ps(server)
        stopped = client.generate(model="alpha", prompt="", keep_alive=0)
        assert stopped.done_reason == "unload" and name not in _ps(server)
        # The OpenAI routes load on demand too: a 503 with Retry-After while it loads.
        body = {"model": "alpha", "prompt": "Hi", "max_tokens": 4}
        first = request(server.url, "POST", "/v1/completions", body, AUTH)
        assert first.status == 503 and first.headers["retry-after"] == "1"
        assert "loading" in first.json()["error"]["message"]
        assert wait_until(lambda: _state(server, name) == "ready")
        assert request(server.url, "POST", "/v1/completions", body, AUTH).status == 200
        with pytest.raises(ollama.ResponseError) as bad:
            client.chat(model="alpha", messages=messages, keep_alive="soon")
        assert bad.value.status_code == 400 and "keep_alive" in bad.value.error
    finally:
        server.stop()


def test_max_loaded_evicts_the_least_recently_used_idle_model(tmp_path):
    server = _serve(tmp_path, fake_models("alpha", "beta"), max_loaded=1)
    try:
        assert set(_ps(server)) == {"/models/alpha.gguf"}  # beta did not fit at start
        client = _client(server)
        client.generate(model="beta", prompt="Hi", options=SHORT)
        assert set(_ps(server)) == {"/models/beta.gguf"}
        # While beta decodes a long answer it cannot be evicted: alpha gets a 503.
        sock = open_stream(server.url, "beta", 400, events=3, api_key=API_KEY)
        try:
            with pytest.raises(ollama.ResponseError) as busy:
                client.generate(model="alpha", prompt="Hi", options=SHORT)
            assert busy.value.status_code == 503 and "busy" in busy.value.error
            assert _ps(server)["/models/beta.gguf"]["sovcli"]["slots_busy"] == 1
        finally:
            sock.close()
        assert wait_until(lambda: _ps(server)["/models/beta.gguf"]["sovcli"]["in_flight"] == 0)
        client.generate(model="alpha", prompt="Hi", options=SHORT)
        assert set(_ps(server)) == {"/models/alpha.gguf"}
    finally:
        server.stop()


def test_memory_budget(tmp_path):
    models = []
    for stem, size in (("alpha", 3), ("beta", 3), ("gamma", 3), ("huge", 9)):
        path = tmp_path / f"{stem}.gguf"
        path.write_bytes(b"\0" * size * 2**20)
        models.append(ServedModel(ref=stem, path=str(path)))
    server = _serve(tmp_path, tuple(models), memory_budget=7 * 2**20, prompt_cache_mib=0)
    try:
        client = _client(server)
        assert _ps(server)["alpha"]["size"] == 3 * 2**20
        client.generate(model="beta", prompt="Hi", options=SHORT)
        assert set(_ps(server)) == {"alpha", "beta"}  # 6 MiB of 7
        with pytest.raises(ollama.ResponseError) as huge:
            client.generate(model="huge", prompt="Hi", options=SHORT)
        assert huge.value.status_code == 503 and "--memory-budget" in huge.value.error
        client.generate(model="alpha", prompt="Hi", options=SHORT)  # beta: least recent
        client.generate(model="gamma", prompt="Hi", options=SHORT)
        assert set(_ps(server)) == {"alpha", "gamma"}
    finally:
        server.stop()


def test_all_installed_serves_the_store_on_demand(tmp_path, installed_smollm2):
    settings = placed(
        server_settings(parallel=2, ctx=512, api_keys=KEYS, all_installed=True), (), tmp_path
    )
    server = AppServer(settings, FakeEngineFactory(FAKE_REPLIES, n_embd=576)).wait_ready()
    try:
        client = _client(server)
        assert [m.model for m in client.list().models] == ["smollm2-135m:Q4_1"]
        assert client.ps().models == []
        for name in ("smollm2-135m", "smollm2-135m:latest", "smollm2-135m:Q4_1"):
            reply = client.chat(
                model=name, messages=[{"role": "user", "content": "Hi"}], options=SHORT
            )
            assert reply.done
        loaded = client.ps().models
        assert [m.model for m in loaded] == ["smollm2-135m:Q4_1"]
        assert loaded[0].digest == installed_smollm2.manifest["files"][0]["sha256"]
        assert loaded[0].details.quantization_level == "Q4_1"
        oai = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        assert [m.id for m in oai.models.list().data] == ["smollm2-135m:Q4_1"]
        # Names that are not store names are never loaded (no paths, no guessing).
        for hostile in ("/etc/passwd", "/tmp/other.gguf", "../smollm2-135m", "smollm2-135m:Q8_0"):
            with pytest.raises(ollama.ResponseError) as missing:
                client.chat(model=hostile, messages=[{"role": "user", "content": "Hi"}])
            assert missing.value.status_code == 404
    finally:
        server.stop()


def test_a_guarded_engine_is_not_retired_during_a_call():
    entered, release = threading.Event(), threading.Event()

    class Slow:
        info = None

        def embed(self, texts):
            entered.set()
            release.wait(10)
            return [[1.0]]

        def close(self):
            pass

    guard = GuardedEngine(Slow(), "slow")  # type: ignore[arg-type]
    worker = threading.Thread(target=guard.embed, args=(["x"],))
    worker.start()
    assert entered.wait(10)
    assert guard.active_calls == 1 and not guard.retire()  # a call runs: not now
    release.set()
    worker.join(10)
    assert guard.retire()
    with pytest.raises(Exception) as refused:
        guard.embed(["x"])
    assert getattr(refused.value, "status", None) == 503


def test_pull_goes_through_sovcli_pull_only_when_allowed(tmp_path, installed_smollm2):
    fields = {"all_installed": True, "allow_pull": True}
    settings = placed(server_settings(api_keys=KEYS, **fields), (), tmp_path)
    server = AppServer(settings, FakeEngineFactory(FAKE_REPLIES, n_embd=576)).wait_ready()
    try:
        client = _client(server)
        done = client.pull("smollm2-135m")  # installed: nothing fetched
        assert done.status == "success"
        for ref in ("/etc/passwd.gguf", "./bundle.tar", "../x.gguf"):
            with pytest.raises(ollama.ResponseError) as refused:
                client.pull(ref)
            assert refused.value.status_code == 400
        # A hub reference goes to sovcli's hub client (here an unroutable endpoint).
        with pytest.raises(ollama.ResponseError) as offline:
            client.pull("hf:example/missing-GGUF")
        assert offline.value.status_code in (404, 502) and "cannot pull" in offline.value.error
        assert client.chat(model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}])
    finally:
        server.stop()


def test_serve_refuses_settings_that_cannot_work():
    from typer.testing import CliRunner

    from sovcli.cli.main import app

    def serve(*args: str):
        return CliRunner().invoke(app, ["serve", *args], env={"SOVCLI_DEFAULT_MODEL": None})

    nothing = serve()
    assert nothing.exit_code == 2 and "no model to serve" in nothing.output
    assert "--all-installed" in nothing.output
    late = serve("--all-installed", "--allow-pull", "--port", "0", "--keep-alive", "soon")
    assert late.exit_code == 2 and "--keep-alive 'soon' is not a duration" in late.output
    budget = serve("--all-installed", "--memory-budget", "lots")
    assert budget.exit_code == 2 and "--memory-budget 'lots' is not a size" in budget.output
    with pytest.raises(UsageError, match="--allow-pull needs --all-installed"):
        replace(server_settings(), models=fake_models("alpha"), allow_pull=True).validate()


def _store_server(tmp_path, factory: FakeEngineFactory) -> AppServer:
    settings = server_settings(parallel=2, ctx=512, api_keys=KEYS, all_installed=True)
    return AppServer(placed(settings, (), tmp_path), factory).wait_ready()


def test_a_model_that_fails_to_load_on_demand_is_a_500_and_the_server_goes_on(
    tmp_path, installed_smollm2
):
    server = _store_server(tmp_path, FakeEngineFactory(fail=EngineError("not a GGUF file")))
    try:
        client = _client(server)
        for _ in range(2):  # each request tries again; none takes the server down
            with pytest.raises(ollama.ResponseError) as failed:
                client.generate(model="smollm2-135m", prompt="Hi")
            assert failed.value.status_code == 500 and "could not be loaded" in failed.value.error
            assert "not a GGUF" not in failed.value.error  # the reason goes to the log only
        assert request(server.url, "GET", "/health").json()["status"] == "ready"
        assert [m.model for m in client.list().models] == ["smollm2-135m:Q4_1"]
    finally:
        server.stop()


def test_a_model_the_site_policy_denies_is_a_403(tmp_path, installed_smollm2, monkeypatch):
    policy = tmp_path / "policy" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text('[models]\nallow = ["some-other-model"]\n', encoding="utf-8")
    policy.chmod(0o644)
    monkeypatch.setenv("SOVCLI_POLICY", str(policy))
    server = _store_server(tmp_path, FakeEngineFactory(FAKE_REPLIES))
    try:
        with pytest.raises(ollama.ResponseError) as denied:
            _client(server).generate(model="smollm2-135m", prompt="Hi")
        assert denied.value.status_code == 403 and "smollm2-135m" in denied.value.error
        assert _ps(server) == {}
    finally:
        server.stop()


def test_serve_without_a_model_uses_the_default_model(monkeypatch):
    from sovcli.cli.serve import _default_models

    assert _default_models(all_installed=False) == []
    monkeypatch.setenv("SOVCLI_DEFAULT_MODEL", "smollm2-135m")
    assert _default_models(all_installed=False) == ["smollm2-135m"]
    assert _default_models(all_installed=True) == []  # --all-installed: the whole store
