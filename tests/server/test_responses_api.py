"""`POST /v1/responses` through the official openai SDK (create, stream, parse, a tool round
trip), on both tiers: the fake engine in-process (scripted answers, see
serve_helpers.FAKE_REPLIES) and the real SmolLM2 model behind `sovcli serve` (`slow`)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field
from serve_helpers import API_KEY, AUTH, AppServer, request, sse_events

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


class City(BaseModel):
    """What `responses.parse` asks for (short strings: a grammar bounds them)."""

    city: str = Field(max_length=30)
    country: str = Field(max_length=30)
    capital: bool


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_create_with_text_input_and_instructions(server, client):
    response = client.responses.create(
        model=server.model_id,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        max_output_tokens=24,
        temperature=0,
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.store is False and response.instructions == "Answer in one short sentence."
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.output_text.strip() == item.content[0].text.strip() != ""
    usage = response.usage
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_message_items_become_the_conversation(server, client):
    response = client.responses.create(
        model=server.model_id,
        input=[
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
            {"type": "message", "role": "user", "content": "What is the capital of France?"},
        ],
        max_output_tokens=60,
        temperature=0,
    )
    assert response.output_text
    if isinstance(server, AppServer):
        prompt = server.engine().requests[-1].prompt
        assert prompt.index("You are terse.") < prompt.index("Say hi.") < prompt.index("Hi.")
        assert response.output_text == "You said: What is the capital of France?"


def test_stream_gives_the_same_text_as_create(server, client):
    kwargs = {
        "model": server.model_id,
        "input": "Name three colors.",
        "max_output_tokens": 60,
        "temperature": 0,
    }
    whole = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
    final = events[-1].response  # get_final_response() wants "completed", not "incomplete"
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == final.output_text
    done = [e for e in events if e.type == "response.output_text.done"]
    assert [d.text for d in done] == [deltas]
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_parse_into_a_pydantic_model(server, client):
    parsed = client.responses.parse(
        model=server.model_id,
        input="Describe Paris as JSON.",
        text_format=City,
        max_output_tokens=120,
        temperature=0,
    )
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, City)
    assert parsed.text.format.type == "json_schema"


def test_tool_call_round_trip(server, client):
    first = client.responses.create(
        model=server.model_id,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=100,
        temperature=0,
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert isinstance(arguments["city"], str)
    second = client.responses.create(
        model=server.model_id,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"},
        ],
        max_output_tokens=30,
        temperature=0,
    )
    assert second.status in ("completed", "incomplete")
    assert second.output[0].type == "message"
    if isinstance(server, AppServer):
        assert "22 C, sunny" in server.engine().requests[-1].prompt


def test_streamed_tool_call_events(server, client):
    with client.responses.stream(
        model=server.model_id,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=100,
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds
    assert "response.output_text.delta" not in kinds
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments)["city"]


def test_cut_by_max_output_tokens_is_incomplete(server, client):
    response = client.responses.create(
        model=server.model_id,
        input="Tell me a long story about a dragon.",
        max_output_tokens=3,
        temperature=0,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "wizard", "content": "Hi"}]}, "input"),
        ({"input": [{"role": [], "content": ""}]}, "input"),  # found by the fuzz test
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input"),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema", "schema": 3}}}, "text"),
        (
            {"input": "Hi", "text": {"format": {"type": "json_schema", "schema": {"enum": []}}}},
            "text",
        ),
        ({"input": "Hi", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": "Hi", "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_bodies_are_400s_naming_the_parameter(server, body, param):
    reply = request(server.url, "POST", "/v1/responses", {"model": server.model_id, **body}, AUTH)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_over_long_input_is_a_context_overflow_naming_input(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=server.model_id, input="hello world " * 1500)
    error = err.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert error["message"].startswith("This model's maximum context length is 1024 tokens.")


def test_route_without_v1_prefix_and_raw_stream(server):
    body = {"model": server.model_id, "input": "Say hi.", "max_output_tokens": 8, "stream": True}
    reply = request(server.url, "POST", "/responses", body, AUTH)
    assert reply.status == 200
    text = reply.body.decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("event: response.") for b in blocks)
    events = sse_events(b"\n\n".join(b.split("\n", 1)[1].encode() for b in blocks) + b"\n\n")
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert events[-1]["response"]["usage"]["output_tokens"] > 0
