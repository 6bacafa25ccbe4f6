"""The server's pure parts: API keys, tool-call parsing, metrics text, address checks, the
listening socket."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from sovcli.errors import UsageError
from sovcli.server.auth import KeyChecker, load_api_keys, parse_keys, presented_key
from sovcli.server.metrics import ServerMetrics
from sovcli.server.runner import bind_socket
from sovcli.server.settings import ServedModel, ServerSettings, is_loopback
from sovcli.server.tools import forced_call_schema, may_become_call, parse_tool_calls

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_keys_from_file_and_environment(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(
        "# team keys\nteam-a:aaaaaaaaaaaaaaaaaaaa\n\nteam-b:bbbbbbbbbbbbbbbbbbbb # ops\n"
    )
    keys = load_api_keys(key_file, "ci:cccccccccccccccccccc")
    assert [k.key_id for k in keys] == ["team-a", "team-b", "ci"]
    assert "aaaa" not in repr(keys)  # secrets never appear in reprs (hence in logs)
    checker = KeyChecker(keys)
    assert checker.identify("bbbbbbbbbbbbbbbbbbbb") == "team-b"
    assert checker.identify("bbbbbbbbbbbbbbbbbbbX") is None
    assert checker.identify("") is None
    assert checker.identify(None) is None


def test_bad_keys_are_refused():
    with pytest.raises(UsageError, match="shorter than 16"):
        parse_keys(["a:short"], "test")
    with pytest.raises(UsageError, match="twice"):
        parse_keys(["a:" + "x" * 20, "a:" + "y" * 20], "test")
    assert parse_keys(["z" * 20], "test")[0].key_id == "key1"


def test_presented_key_reads_bearer_and_x_api_key():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"x-api-key": "abc"}) == "abc"
    assert presented_key({}) is None


def test_non_loopback_needs_keys_unless_no_auth():
    model = (ServedModel(ref="m", path="/m.gguf"),)
    ServerSettings(models=model, host="127.0.0.1").validate()
    ServerSettings(models=model, host="::1").validate()
    with pytest.raises(UsageError):
        ServerSettings(models=model, host="0.0.0.0").validate()
    with pytest.raises(UsageError):
        ServerSettings(models=model, host="192.168.1.10").validate()
    ServerSettings(models=model, host="0.0.0.0", no_auth=True).validate()
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")


def test_tool_calls_are_parsed_from_hermes_and_bare_json():
    hermes = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    (call,) = parse_tool_calls(hermes, TOOLS)
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    bare = parse_tool_calls(
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}', TOOLS
    )
    assert json.loads(bare[0]["function"]["arguments"]) == {"city": "Rome"}
    assert parse_tool_calls("It is sunny in Oslo.", TOOLS) is None
    assert parse_tool_calls('{"name": "launch_rockets", "arguments": {}}', TOOLS) is None
    assert may_become_call("<tool_") and may_become_call("  {") and not may_become_call("Sure")


def test_forced_call_schema_pins_the_function_name():
    schema = forced_call_schema(TOOLS, "function:get_weather")
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    assert forced_call_schema(TOOLS, "auto") is None


def test_metrics_text_format():
    metrics = ServerMetrics()
    metrics.requests.inc(("/v1/chat/completions", "200"))
    metrics.latency.observe(("/v1/chat/completions",), 0.3)
    text = metrics.render([('m"1', 2, 1, 8)])
    assert 'sovcli_requests_total{endpoint="/v1/chat/completions",status="200"} 1' in text
    assert (
        'sovcli_request_duration_seconds_bucket{endpoint="/v1/chat/completions",le="0.25"} 0'
        in text
    )
    assert (
        'sovcli_request_duration_seconds_bucket{endpoint="/v1/chat/completions",le="0.5"} 1' in text
    )
    assert 'sovcli_request_duration_seconds_count{endpoint="/v1/chat/completions"} 1' in text
    assert 'sovcli_active_sequences{model="m\\"1"} 2' in text
    assert 'sovcli_queue_depth{model="m\\"1"} 1' in text


def test_bound_socket_accepts_connections_with_tcp_nodelay():
    """Without TCP_NODELAY, a response sent in two writes waits ~40 ms for a delayed ACK."""

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = bind_socket("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 5)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(main()) != 0
