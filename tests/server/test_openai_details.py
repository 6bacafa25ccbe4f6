"""OpenAI details as clients use them: `n` choices, `logit_bias`, `top_p: 0`, routes without
`/v1`, the context overflow wording, error types; on both tiers (the real one `slow`)."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import API_KEY, AUTH, AppServer, chat_body, request, sse_events

from sovcli.server.validate import MAX_CHOICES


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_n_choices_are_decoded_as_parallel_sequences(server, client):
    response = client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Name a color."}],
        n=3,
        max_tokens=12,
        temperature=0.9,
        seed=7,
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens >= 3
    if isinstance(server, AppServer):
        seeds = [r.sampling.seed for r in server.engine().requests[-3:]]
        assert len(set(seeds)) == 3  # each choice samples with its own seed


def test_n_choices_stream_interleaved_with_their_index(server):
    body = chat_body(server.model_id, "Name a color.", n=2, stream=True, max_tokens=10)
    body["stream_options"] = {"include_usage": True}
    reply = request(server.url, "POST", "/v1/chat/completions", body, AUTH)
    events = sse_events(reply.body)
    assert events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    finishes = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert set(finishes) == {0, 1} and all(texts.values())
    assert texts[0] == texts[1]  # greedy: both choices are the same answer
    assert events[-2]["usage"]["completion_tokens"] >= 2


def test_n_text_completions(server, client):
    response = client.completions.create(
        model=server.model_id, prompt="Once upon a time", n=2, max_tokens=6, temperature=0
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].text == response.choices[1].text


@pytest.mark.parametrize("n", [0, MAX_CHOICES + 1, 1.5, "2", True])
def test_n_out_of_range_is_a_400(server, n):
    reply = request(
        server.url, "POST", "/v1/chat/completions", chat_body(server.model_id, "Hi", n=n), AUTH
    )
    assert reply.status == 400 and reply.json()["error"]["param"] == "n"


@pytest.mark.parametrize(
    "bias",
    [
        [1, 2],
        {"abc": 1},
        {"-1": 5},
        {"12": 101},
        {"12": "high"},
        {"12": True},
        {"99999999999": 1},
        {str(i): 1 for i in range(1025)},
    ],
)
def test_bad_logit_bias_is_a_400(server, bias):
    body = chat_body(server.model_id, "Hi", logit_bias=bias)
    reply = request(server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["param"] == "logit_bias"


def test_logit_bias_outside_the_vocabulary_is_a_400(server):
    body = chat_body(server.model_id, "Hi", logit_bias={"2000000": -100})
    reply = request(server.url, "POST", "/v1/completions", {**body, "prompt": "Hi"}, AUTH)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["param"] == "logit_bias" and "outside the vocabulary" in error["message"]


def test_logit_bias_and_top_p_zero_reach_the_engine(server, client):
    if not isinstance(server, AppServer):
        pytest.skip("the fake engine records what it was asked (the real one: test below)")
    client.chat.completions.create(
        model=server.model_id,
        messages=[{"role": "user", "content": "Hi"}],
        logit_bias={"72": -100, "105": 5.5},
        top_p=0,
        temperature=1.0,
        max_tokens=4,
    )
    sampling = server.engine().requests[-1].sampling
    assert sampling.logit_bias == {72: -100.0, 105: 5.5}
    assert sampling.temperature == 0.0 and sampling.top_p == 1.0  # top_p 0: greedy


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        ("/completions", {"prompt": "Hi", "max_tokens": 4}),
        ("/embeddings", {"input": "Hi"}),
    ],
)
def test_routes_without_the_v1_prefix(server, path, body):
    reply = request(server.url, "POST", path, {"model": server.model_id, **body}, AUTH)
    assert reply.status == 200, reply.body
    assert request(server.url, "GET", "/models", headers=AUTH).json()["data"][0]["id"]
    bare = openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0)
    assert bare.models.retrieve(server.model_id).id == server.model_id


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi " * 3000}]},
            "messages",
        ),
        ("/v1/completions", {"prompt": "hi " * 3000}, "prompt"),
        ("/v1/completions", {"prompt": [72] * 3000}, "prompt"),
    ],
)
def test_context_overflow_is_worded_as_openai_words_it(server, path, body, param):
    reply = request(server.url, "POST", path, {"model": server.model_id, **body}, AUTH)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert error["type"] == "invalid_request_error"
    message = error["message"]
    assert message.startswith("This model's maximum context length is 1024 tokens. However, your")
    tokens = int(message.split("resulted in ")[1].split()[0])
    assert tokens > 1024
    assert message.endswith(f"Please reduce the length of the {param}.")


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": []},
        {"type": "object", "properties": {"a": {"enum": []}}},
        {"anyOf": []},
        {"type": []},
    ],
)
def test_schema_that_admits_nothing_is_a_400(server, schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = chat_body(server.model_id, "Hi", response_format=fmt)
    reply = request(server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400
    assert reply.json()["error"]["param"] == "response_format"


def test_error_types_are_openai_s(server):
    wrong = request(server.url, "GET", "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert wrong.json()["error"] == {
        "message": wrong.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    missing = request(server.url, "POST", "/v1/chat/completions", chat_body("no-such", "Hi"), AUTH)
    assert missing.status == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.json()["error"]["code"] == "model_not_found"


def test_embedding_ids_outside_the_vocabulary_are_a_400_not_a_crash(server, client):
    """Issue #15 item 1: `[[100000, 15339]]` aborted the process (SIGABRT in llama.cpp)."""
    for ids in ([[100000, 15339]], [[-1, 5]], [[2**40]], [[5, 0x110000 + 5]]):
        reply = request(
            server.url, "POST", "/v1/embeddings", {"model": server.model_id, "input": ids}, AUTH
        )
        if ids[0][0] == 100000 and isinstance(server, AppServer):
            assert reply.status == 200  # a code point: inside the fake vocabulary
            continue
        assert reply.status == 400, (ids, reply.body)
        assert reply.json()["error"]["param"] == "input"
    assert client.embeddings.create(model=server.model_id, input="still here").data


def test_embedding_input_longer_than_the_context_is_a_400_naming_input(server):
    body = {"model": server.model_id, "input": ["short", "hello " * 3000]}
    reply = request(server.url, "POST", "/v1/embeddings", body, AUTH)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
