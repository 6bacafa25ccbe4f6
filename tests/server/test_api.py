"""The OpenAI endpoints over real HTTP with the official openai client, on both tiers: the
fake engine in-process (scripted answers, see serve_helpers.FAKE_REPLIES) and the real
SmolLM2 model behind `sovcli serve` (`slow`)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time

import jsonschema
import openai
import pytest
from serve_helpers import API_KEY, metric_value, open_stream, request, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(server) -> str:
    return server.model_id


def _chat(client, model_id, prompt, **kwargs):
    return client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 24),
        **kwargs,
    )


def test_health_and_models(server, client, model_id):
    health = request(server.url, "GET", "/health")
    assert health.status == 200
    assert health.json()["status"] == "ready"
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [model_id]
    # The model also answers to its name (the file stem here).
    card = client.models.retrieve(server.alias)
    assert card.id == model_id


def test_chat_completion(client, model_id):
    response = _chat(client, model_id, "What is the capital of France?")
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert response.model == model_id
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 24
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_chat_stream_matches_non_stream_and_reports_usage(client, model_id):
    prompt = "Name three colors."
    whole = _chat(client, model_id, prompt)
    chunks = list(
        _chat(client, model_id, prompt, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_stream_ends_with_done(server, model_id):
    reply = request(
        server.url,
        "POST",
        "/v1/chat/completions",
        {
            "model": model_id,
            "stream": True,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        AUTH,
    )
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert "usage" not in json.loads(event[6:]) or json.loads(event[6:])["usage"] is None


def test_text_completion_sync_and_stream(client, model_id):
    prompt = "The capital of France is"
    whole = client.completions.create(model=model_id, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.object == "text_completion"
    assert whole.choices[0].text.strip()
    assert whole.usage.completion_tokens > 0
    streamed = client.completions.create(
        model=model_id,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_async_client(server, model_id):
    async def main():
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0
        ) as aclient:
            response = await aclient.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": "Say hello in Spanish."}],
                temperature=0,
                max_tokens=12,
            )
            return response.choices[0].message.content

    assert asyncio.run(main()).strip()


def test_json_schema_output_validates(client, model_id):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population_millions": {"type": "integer"},
            "capital": {"type": "boolean"},
            "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
        },
        "required": ["city", "country", "population_millions", "capital", "continent"],
        "additionalProperties": False,
    }
    response = _chat(
        client,
        model_id,
        "Describe Paris as JSON.",
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(response.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_json_object_output_parses(client, model_id):
    response = _chat(
        client,
        model_id,
        'Answer in JSON like {"capital": "..."}: what is the capital of Italy?',
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(response.choices[0].message.content), dict)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def test_forced_tool_call_has_openai_shape(client, model_id):
    response = _chat(
        client,
        model_id,
        "What is the weather in Paris?",
        max_tokens=80,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_required_tool_call_streamed(client, model_id):
    chunks = list(
        _chat(
            client,
            model_id,
            "Weather in Rome, please.",
            max_tokens=80,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        )
    )
    calls = [
        tc
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
    ]
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(
        json.loads(calls[0].function.arguments), WEATHER_TOOL["function"]["parameters"]
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_results_round_trip(client, model_id):
    """A conversation holding a call and its result renders and gets an answer."""
    response = client.chat.completions.create(
        model=model_id,
        temperature=0,
        max_tokens=16,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Oslo", "unit": "celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
        ],
    )
    assert response.choices[0].message.content
    assert response.choices[0].message.tool_calls is None


def test_logprobs(client, model_id):
    response = _chat(
        client, model_id, "What is 2 plus 2?", max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content) == response.choices[0].message.content
    for item in content:
        assert item.logprob <= 0
        assert 1 <= len(item.top_logprobs) <= 3


def test_embeddings(client, model_id):
    # The openai client asks for base64 by default and decodes it.
    response = client.embeddings.create(model=model_id, input=["a cat", "a dog", "tax law"])
    assert [d.index for d in response.data] == [0, 1, 2]
    vectors = [d.embedding for d in response.data]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) == 576
    for vector in vectors:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-3)
    assert response.usage.prompt_tokens > 0
    floats = client.embeddings.create(model=model_id, input="a cat", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


def test_embeddings_base64_is_little_endian_float32(server, model_id):
    reply = request(
        server.url,
        "POST",
        "/v1/embeddings",
        {"model": model_id, "input": "a cat", "encoding_format": "base64"},
        AUTH,
    )
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(values) == 576


def _active(server) -> float:
    text = request(server.url, "GET", "/metrics", headers=AUTH).body.decode()
    return metric_value(text, "sovcli_active_sequences", model=model_id_of(server))


def model_id_of(server) -> str:
    return request(server.url, "GET", "/v1/models", headers=AUTH).json()["data"][0]["id"]


def test_disconnect_mid_stream_frees_the_slot(server, model_id, server_log):
    sock = open_stream(server.url, model_id, 500, events=6, api_key=API_KEY)
    assert _active(server) == 1
    sock.close()
    deadline = time.monotonic() + 30
    while _active(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active(server) == 0
    text = request(server.url, "GET", "/metrics", headers=AUTH).body.decode()
    generated = metric_value(text, "sovcli_generated_tokens_total", model=model_id)
    time.sleep(0.3)
    text = request(server.url, "GET", "/metrics", headers=AUTH).body.decode()
    assert metric_value(text, "sovcli_generated_tokens_total", model=model_id) == generated
    # The request was logged as a disconnect, far short of its 500 tokens.
    deadline = time.monotonic() + 10
    while "client-disconnected" not in server_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in server_log().splitlines() if "client-disconnected" in x)
    gen = int(line.split(" gen=")[1].split()[0])
    assert gen < 500


def test_errors_have_openai_shape_and_server_keeps_serving(server, client, model_id):
    # Malformed JSON
    bad = request(server.url, "POST", "/v1/chat/completions", b"{not json", AUTH)
    assert bad.status == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    # Unknown model
    with pytest.raises(openai.NotFoundError) as err:
        _chat(client, "no-such-model", "Hi")
    assert err.value.body["code"] == "model_not_found"
    # Wrong key, and no key
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        _chat(wrong, model_id, "Hi")
    assert request(server.url, "GET", "/v1/models").status == 401
    # Oversized body (the server caps bodies at 64 KiB)
    huge = {"model": model_id, "messages": [{"role": "user", "content": "x" * 100_000}]}
    too_big = request(server.url, "POST", "/v1/chat/completions", huge, AUTH)
    assert too_big.status == 413
    assert "error" in too_big.json()
    # Over-long prompt (the context is 1024 tokens per sequence)
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, model_id, "hello world " * 1500)
    assert err.value.body["code"] == "context_length_exceeded"
    # Bad parameters
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, model_id, "Hi", max_tokens=100_000)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        _chat(client, model_id, "Hi", n=99)  # n is capped (n=2 works: test_openai_details)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[])
    # Unknown endpoint
    missing = request(server.url, "GET", "/v1/nothing", headers=AUTH)
    assert missing.status == 404 and "error" in missing.json()
    # ... and the server still answers.
    assert _chat(client, model_id, "What is the capital of France?").choices[0].message.content


def test_metrics_exposition(server, client, model_id):
    _chat(client, model_id, "Hi")
    text = request(server.url, "GET", "/metrics", headers=AUTH).body.decode()
    assert (
        metric_value(text, "sovcli_requests_total", endpoint="/v1/chat/completions", status="200")
        >= 1
    )
    assert (
        metric_value(text, "sovcli_requests_total", endpoint="/v1/chat/completions", status="404")
        >= 1
    )
    assert metric_value(text, "sovcli_prompt_tokens_total", model=model_id) > 0
    assert metric_value(text, "sovcli_generated_tokens_total", model=model_id) > 0
    assert "# TYPE sovcli_request_duration_seconds histogram" in text
    assert metric_value(text, "sovcli_time_to_first_token_seconds_count", model=model_id) >= 1
    assert metric_value(text, "sovcli_queue_depth", model=model_id) == 0
    assert metric_value(text, "sovcli_parallel_slots", model=model_id) == 8


def test_request_log_and_audit_log_hold_no_content(server, client, model_id, server_log):
    secret_word = "zebracornium"
    _chat(client, model_id, f"Repeat the word {secret_word}.")
    deadline = time.monotonic() + 10
    records = []
    while time.monotonic() < deadline:
        lines = server.audit_path.read_text().splitlines()
        records = [json.loads(x) for x in lines]
        if any(r["endpoint"] == "/v1/chat/completions" and r["status"] == 200 for r in records):
            break
        time.sleep(0.05)
    ok = [r for r in records if r["endpoint"] == "/v1/chat/completions" and r["status"] == 200]
    record = ok[-1]
    assert record["key_id"] == "team-a"
    assert record["model"] == model_id
    assert record["client"].startswith("127.0.0.1:")
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["latency_s"] > 0 and "time" in record
    assert "prompt" not in record and "completion" not in record
    statuses = {r["status"] for r in records}
    assert {401, 404}.issubset(statuses)
    # (The line is written just after the response: on the in-process tier, wait for it.)
    wait_until(lambda: "POST /v1/chat/completions 200 key=team-a" in server_log())
    log = server_log()
    assert "POST /v1/chat/completions 200 key=team-a" in log
    assert secret_word not in log
    assert secret_word not in server.audit_path.read_text()
    assert API_KEY not in log
