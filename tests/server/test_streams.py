"""How chat and text completions end, streamed or not, on the fake engine (scripted endings
the real model cannot be made to produce on demand)."""

from __future__ import annotations

import pytest
from serve_helpers import request, server_settings, sse_events, start_fake_server

ENDPOINTS = ["/v1/chat/completions", "/v1/completions"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    server = start_fake_server(server_settings(parallel=2), tmp_path_factory.mktemp("streams"))
    yield server
    server.stop()


def _body(endpoint: str, prompt: str, **extra) -> dict:
    if endpoint == "/v1/chat/completions":
        return {"messages": [{"role": "user", "content": prompt}], **extra}
    return {"prompt": prompt, **extra}


def _text(endpoint: str, events: list) -> str:
    key = "delta" if endpoint == "/v1/chat/completions" else None
    parts = []
    for event in events:
        if isinstance(event, dict) and event.get("choices"):
            choice = event["choices"][0]
            parts.append((choice[key].get("content") if key else choice["text"]) or "")
    return "".join(parts)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_cancelled_stream_says_the_request_was_cancelled(fake, endpoint):
    reply = request(fake.url, "POST", endpoint, _body(endpoint, "Stop me halfway", stream=True))
    assert reply.status == 200
    events = sse_events(reply.body)
    assert _text(endpoint, events) == "Half an answer, and then"
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["message"] == "the request was cancelled"
    assert error["type"] == "server_error"
    assert not any(
        e["choices"][0]["finish_reason"]
        for e in events[:-2]
        if isinstance(e, dict) and e["choices"]
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_failed_stream_says_generation_failed(fake, endpoint):
    reply = request(fake.url, "POST", endpoint, _body(endpoint, "Break down", stream=True))
    events = sse_events(reply.body)
    assert events[-2]["error"]["message"] == "generation failed"
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_cancelled_or_failed_without_stream_are_503_and_500(fake, endpoint):
    cancelled = request(fake.url, "POST", endpoint, _body(endpoint, "Stop me halfway"))
    assert cancelled.status == 503
    assert cancelled.headers["retry-after"] == "1"
    assert (
        cancelled.json()["error"]["message"] == "the request was cancelled (server shutting down)"
    )
    failed = request(fake.url, "POST", endpoint, _body(endpoint, "Break down"))
    assert failed.status == 500
    assert failed.json()["error"] == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stop_strings_and_max_tokens_end_the_text(fake, endpoint):
    stopped = request(fake.url, "POST", endpoint, _body(endpoint, "Name a color", stop=["color"]))
    choice = stopped.json()["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    assert text == "You said: Name a "
    assert choice["finish_reason"] == "stop"
    streamed = request(
        fake.url, "POST", endpoint, _body(endpoint, "Name a color", max_tokens=5, stream=True)
    )
    events = sse_events(streamed.body)
    assert _text(endpoint, events) == "You s"
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_completion_echo_and_token_prompts(fake):
    tokens = [ord(ch) for ch in "Hi there"]
    whole = request(
        fake.url, "POST", "/v1/completions", {"prompt": tokens, "echo": True, "max_tokens": 64}
    ).json()
    assert whole["choices"][0]["text"] == "Hi thereYou said: Hi there"
    assert whole["usage"]["prompt_tokens"] == len(tokens)
    streamed = request(
        fake.url,
        "POST",
        "/v1/completions",
        {"prompt": "Hi", "echo": True, "stream": True, "max_tokens": 64},
    )
    assert _text("/v1/completions", sse_events(streamed.body)) == "HiYou said: Hi"
    bad = request(fake.url, "POST", "/v1/completions", {"prompt": [1, -5], "max_tokens": 4})
    assert bad.status == 400
    assert "outside the vocabulary" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("extra", "constrained"),
    [
        ({}, False),
        ({"response_format": {"type": "text"}}, False),
        ({"response_format": {"type": "json_object"}}, True),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            True,
        ),
        ({"tools": [WEATHER_TOOL]}, False),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, True),
    ],
)
def test_structured_output_reaches_the_engine_as_a_grammar(fake, extra, constrained):
    reply = request(
        fake.url, "POST", "/v1/chat/completions", _body("/v1/chat/completions", "Hi", **extra)
    )
    assert reply.status == 200
    grammar = fake.engine().requests[-1].sampling.grammar
    assert (grammar is not None) is constrained


def test_forced_call_streams_only_the_call(fake):
    reply = request(
        fake.url,
        "POST",
        "/v1/chat/completions",
        _body(
            "/v1/chat/completions",
            "Weather in Rome, please.",
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        ),
    )
    events = sse_events(reply.body)
    assert _text("/v1/chat/completions", events) == ""  # the held text never shows
    (call,) = next(
        e["choices"][0]["delta"]["tool_calls"]
        for e in events
        if isinstance(e, dict) and e["choices"] and "tool_calls" in e["choices"][0]["delta"]
    )
    assert call["function"]["name"] == "get_weather"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_tools_release_text_that_is_no_call(fake):
    body = _body("/v1/chat/completions", "Hello", tools=[WEATHER_TOOL], stream=True)
    events = sse_events(request(fake.url, "POST", "/v1/chat/completions", body).body)
    assert _text("/v1/chat/completions", events) == "You said: Hello"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
