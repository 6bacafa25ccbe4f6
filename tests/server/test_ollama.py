"""The Ollama API through the official `ollama` Python client, on both tiers: the fake engine
in-process and the real SmolLM2 model behind `sovcli serve` (`slow`). Same server, same port,
same API keys, audit log and metrics as the OpenAI routes."""

from __future__ import annotations

import json
import math

import jsonschema
import ollama
import pytest
from serve_helpers import (
    API_KEY,
    AppServer,
    audit_records,
    metric_value,
    request,
    wait_for_records,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GREEDY = {"temperature": 0, "num_predict": 48}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]},
        "country": {"type": "string", "maxLength": 24},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "country", "capital"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=120)


@pytest.fixture(scope="module")
def name(server) -> str:
    """The model as an Ollama client names it (the file stem the server also answers to)."""
    return server.alias


def _fake(server) -> bool:
    return isinstance(server, AppServer)


def test_chat_not_streamed(server, client, name):
    reply = client.chat(
        model=name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options=GREEDY,
        stream=False,
    )
    assert reply.model == name
    assert reply.done is True and reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.prompt_eval_count > 0 and 0 < reply.eval_count <= 48
    assert reply.total_duration > 0 and reply.eval_duration >= 0
    if _fake(server):
        assert reply.message.content == "You said: What is the capital of France?"


def test_chat_streamed(server, client, name):
    messages = [{"role": "user", "content": "Name three colours."}]
    parts = list(client.chat(model=name, messages=messages, options=GREEDY, stream=True))
    assert len(parts) >= 3
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    assert parts[-1].done_reason in ("stop", "length") and parts[-1].eval_count > 0
    text = "".join(p.message.content for p in parts)
    assert text.strip()
    if _fake(server):
        whole = client.chat(model=name, messages=messages, options=GREEDY, stream=False)
        assert text == whole.message.content


def test_generate_streamed_and_not(server, client, name):
    whole = client.generate(model=name, prompt="Say hello.", options=GREEDY, stream=False)
    assert whole.done and whole.response.strip() and whole.eval_count > 0
    parts = list(client.generate(model=name, prompt="Say hello.", options=GREEDY, stream=True))
    assert parts[-1].done and "".join(p.response for p in parts).strip()
    raw = client.generate(model=name, prompt="The sky is", raw=True, options=GREEDY, stream=False)
    assert raw.done and raw.prompt_eval_count < whole.prompt_eval_count  # no chat template
    if _fake(server):
        assert whole.response == "You said: Say hello."


def test_embed_and_legacy_embeddings(client, name):
    reply = client.embed(model=name, input=["The cat sat.", "Stock markets fell."])
    assert len(reply.embeddings) == 2
    first, second = reply.embeddings
    assert len(first) == 576 and math.isclose(math.hypot(*first), 1.0, rel_tol=1e-3)
    assert first != second and reply.prompt_eval_count > 0 and reply.total_duration > 0
    legacy = client.embeddings(model=name, prompt="The cat sat.")
    assert len(legacy.embedding) == 576
    assert max(abs(a - b) for a, b in zip(legacy.embedding, first, strict=True)) < 1e-4


def test_list_show_ps_version(server, client, name):
    listed = client.list()
    assert [m.model for m in listed.models] == [server.model_id]
    assert listed.models[0].details.format == "gguf"
    shown = client.show(name)
    assert shown.details.format == "gguf" and "completion" in shown.capabilities
    if not _fake(server):
        assert shown.modelinfo["general.architecture"] == "llama"
        assert "<|im_start|>" in shown.template
    loaded = client.ps()
    assert [m.model for m in loaded.models] == [server.model_id]
    assert loaded.models[0].size > 0 and loaded.models[0].expires_at is not None
    assert loaded.models[0].context_length == 1024
    raw = request(server.url, "GET", "/api/ps", headers=AUTH).json()["models"][0]["sovcli"]
    assert raw["state"] == "ready" and raw["slots_busy"] + raw["slots_free"] == 8
    assert raw["keep_alive_s"] == 300
    version = request(server.url, "GET", "/api/version", headers=AUTH).json()
    assert version["server"] == "sovcli" and version["version"]


def test_structured_output_validates(server, client, name):
    reply = client.chat(
        model=name,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        format=CITY_SCHEMA,
        options={"temperature": 0, "num_predict": 120},
        stream=False,
    )
    data = json.loads(reply.message.content)
    if _fake(server):
        data = {k: data[k] for k in ("city", "country", "capital")}  # the fake ignores grammars
    jsonschema.validate(data, CITY_SCHEMA)
    plain = client.generate(
        model=name, prompt="Give a JSON object.", format="json", options=GREEDY, stream=False
    )
    if not _fake(server):
        assert plain.done_reason == "length" or isinstance(json.loads(plain.response), dict)


def test_errors_have_ollama_shape(server, client, name):
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error
    with pytest.raises(ollama.ResponseError) as bad:
        client.generate(model=name, prompt="Hi", options={"temperature": -1}, stream=False)
    assert bad.value.status_code == 400 and "temperature" in bad.value.error
    with pytest.raises(ollama.ResponseError) as too_many:
        client.generate(model=name, prompt="Hi", options={"num_predict": 10_000}, stream=False)
    assert too_many.value.status_code == 400 and "num_predict" in too_many.value.error
    with pytest.raises(ollama.ResponseError) as wide:
        client.generate(model=name, prompt="Hi", options={"num_ctx": 100_000}, stream=False)
    assert wide.value.status_code == 400 and "num_ctx" in wide.value.error
    with pytest.raises(ollama.ResponseError) as mirostat:
        client.generate(model=name, prompt="Hi", options={"mirostat": 2}, stream=False)
    assert mirostat.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as pull:
        client.pull(name)
    assert pull.value.status_code == 403 and "--allow-pull" in pull.value.error
    # The gate's own refusals are reshaped too: {"error": "message"}.
    no_key = request(server.url, "POST", "/api/chat", {"model": name, "messages": []})
    assert no_key.status == 401 and isinstance(no_key.json()["error"], str)
    broken = request(server.url, "POST", "/api/generate", b"{not json", AUTH)
    assert broken.status == 400 and isinstance(broken.json()["error"], str)
    # ... and the server still answers.
    assert client.generate(model=name, prompt="Hi", options=GREEDY, stream=False).done


def test_audit_and_metrics_cover_the_ollama_routes(server, client, name):
    client.chat(model=name, messages=[{"role": "user", "content": "Audit me."}], options=GREEDY)
    records = wait_for_records(server.audit_path, 1, endpoint="/api/chat", status=200)
    last = records[-1]
    assert last["key_id"] == "team-a" and last["model"] == server.model_id
    assert last["prompt_tokens"] > 0 and last["completion_tokens"] > 0
    assert "Audit me." not in json.dumps(audit_records(server.audit_path))  # no content
    parts = list(client.generate(model=name, prompt="Stream me.", options=GREEDY, stream=True))
    streamed = wait_for_records(server.audit_path, 1, endpoint="/api/generate", stream=True)
    assert streamed[-1]["completion_tokens"] == parts[-1].eval_count
    metrics = request(server.url, "GET", "/metrics", headers=AUTH).body.decode()
    generated = metric_value(metrics, "sovcli_generated_tokens_total", model=server.model_id)
    assert generated and generated > 0


HOSTILE = [
    ("/api/chat", {"model": 5, "messages": []}),
    ("/api/chat", {"model": "x" * 10_000, "messages": []}),
    ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("/api/chat", {"model": "M", "messages": "Hi"}),
    ("/api/chat", {"model": "M", "messages": [{"role": "god", "content": "Hi"}]}),
    ("/api/chat", {"model": "M", "messages": [{"role": "user", "content": ["Hi"]}]}),
    ("/api/chat", {"model": "M", "messages": [{"role": "user", "images": ["aGk="]}]}),
    ("/api/chat", {"model": "M", "messages": [], "tools": [{"type": "function"}]}),
    ("/api/chat", {"model": "M", "messages": [], "stream": "yes"}),
    ("/api/chat", {"model": "M", "messages": [], "keep_alive": True}),
    ("/api/chat", {"model": "M", "messages": [], "keep_alive": "5 parsecs"}),
    ("/api/chat", {"model": "M", "messages": [], "format": 5}),
    ("/api/chat", {"model": "M", "messages": [], "options": []}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"seed": 10**30}}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"num_ctx": -5}}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"stop": ["a"] * 100}}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"top_k": 1.5}}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"tfs_z": 0.5}}),
    ("/api/chat", {"model": "M", "messages": [], "options": {"no_such_option": 1}}),
    ("/api/generate", {"model": "M", "prompt": 5}),
    ("/api/generate", {"model": "M", "prompt": "Hi", "template": "{{ .Prompt }}"}),
    ("/api/generate", {"model": "M", "prompt": "Hi", "context": [1, 2, 3]}),
    ("/api/generate", {"model": "M", "prompt": "Hi", "suffix": "end"}),
    ("/api/generate", {"model": "M", "prompt": "Hi", "raw": "true"}),
    ("/api/generate", {"model": "M", "prompt": "Hi", "format": {"enum": []}}),
    ("/api/embed", {"model": "M", "input": []}),
    ("/api/embed", {"model": "M", "input": [5]}),
    ("/api/embed", {"model": "M", "input": ["a"] * 300}),
    ("/api/embed", {"model": "M", "input": "a", "truncate": "no"}),
    ("/api/embed", {"model": "M", "input": "a", "dimensions": 3}),
    ("/api/embeddings", {"model": "M", "prompt": ["a"]}),
    ("/api/show", {}),
    ("/api/show", {"model": ["M"]}),
    ("/api/stop", {"model": "no-such-model"}),
    ("/api/pull", {"model": "/etc/passwd"}),
    ("/api/chat", b"[1, 2, 3]"),
    ("/api/chat", b"{" * 200 + b"}" * 200),
    ("/api/generate", b'{"model": "M", "prompt": "\\ud800"}'),
    ("/api/generate", b'{"model": "M", "prompt": "Hi", "options": {"temperature": NaN}}'),
]


@pytest.mark.parametrize(("path", "body"), HOSTILE, ids=[f"{p}-{i}" for i, (p, _) in
                         enumerate(HOSTILE)])  # fmt: skip
def test_hostile_bodies_get_a_4xx_and_the_server_goes_on(server, client, name, path, body):
    if isinstance(body, dict):
        body = json.dumps(body).replace('"M"', json.dumps(name)).encode()
    reply = request(server.url, "POST", path, body, {**AUTH, "Content-Type": "application/json"})
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    error = reply.json()["error"]
    assert isinstance(error, str) and error and "Traceback" not in error
    ok = client.generate(model=name, prompt="Hi", options={"num_predict": 2}, stream=False)
    assert ok.done


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def test_tool_calls_round_trip(server, client, name):
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    options = {"temperature": 0, "num_predict": 80}
    reply = client.chat(model=name, messages=asked, tools=[WEATHER_TOOL], options=options)
    calls = reply.message.tool_calls or []
    for call in calls:  # a small real model may answer in text instead: both are valid
        assert call.function.name == "get_weather"
        jsonschema.validate(dict(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    if _fake(server):
        assert [dict(c.function.arguments) for c in calls] == [{"city": "Paris", "unit": "celsius"}]
        streamed = list(client.chat(model=name, messages=asked, tools=[WEATHER_TOOL],
                                    options=options, stream=True))  # fmt: skip
        with_calls = [p for p in streamed if p.message.tool_calls]
        assert len(with_calls) == 1 and streamed[-1].done
        assert "".join(p.message.content for p in streamed) == ""  # held back: it was a call
    follow_up = [
        *asked,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temperature": 21}', "tool_name": "get_weather"},
    ]  # fmt: skip
    answer = client.chat(model=name, messages=follow_up, tools=[WEATHER_TOOL], options=options)
    assert answer.done and (answer.message.content or answer.message.tool_calls)


def test_event_streams_become_ndjson_whatever_the_chunking():
    """The reshaping middleware, fed events cut at every byte, and an OpenAI-shaped error."""
    import asyncio

    from sovcli.server.ollama_shape import OllamaShape

    events = b'data: {"a":1}\n\ndata: {"error":{"message":"cut","type":"x"}}\n\ndata: [DONE]\n\n'

    async def stream_app(scope, receive, send):
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(len(events)):
            await send({"type": "http.response.body", "body": events[i : i + 1], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def error_app(scope, receive, send):
        body = b'{"error": {"message": "no such model", "type": "invalid_request_error"}}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"71")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def run(app) -> tuple[dict, bytes]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/api/chat"}
        await OllamaShape(app)(scope, None, send)
        return sent[0], b"".join(m.get("body", b"") for m in sent[1:])

    start, body = asyncio.run(run(stream_app))
    assert (b"content-type", b"application/x-ndjson") in start["headers"]
    assert body == b'{"a":1}\n{"error": "cut"}\n'
    start, body = asyncio.run(run(error_app))
    assert start["status"] == 404 and json.loads(body) == {"error": "no such model"}
    assert (b"content-length", str(len(body)).encode()) in start["headers"]
