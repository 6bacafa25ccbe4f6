"""Issue #13, finding 12 (server part) and issue #15 item 1: bodies that used to end in a
500 or abort the process.

- a 100,000-deep JSON body (and one just past the nesting cap) is a 400, not a 500 or a
  RecursionError; a lone surrogate is a 400 too (see test_hostile_audit);
- `/v1/embeddings` with token ids outside the vocabulary is a 400 (llama.cpp used to abort
  the whole server on them).
"""

from __future__ import annotations

import json

import pytest
from serve_helpers import AUTH, ServerProcess, assert_still_serves, request

from sovcli.server.jsonbody import MAX_DEPTH, check_structure, parse_json_body


def deep(levels: int, open_: str = "[", leaf: str = "", close: str = "]") -> bytes:
    """A chat body whose message content nests `levels` deep."""
    nested = open_ * levels + leaf + close * levels
    return ('{"model": "m", "messages": [{"role": "user", "content": ' + nested + "}]}").encode()


@pytest.mark.parametrize(
    "body",
    [
        deep(100_000),
        deep(100_000, '{"a":', "}").replace(b"}}]}", b"1}}]}", 1),
        deep(MAX_DEPTH + 5),
    ],
    ids=["arrays-100k", "objects-100k", "just-past-the-cap"],
)
def test_deeply_nested_body_is_a_400(hostile_server, body):
    reply = request(hostile_server.url, "POST", "/v1/chat/completions", body, AUTH)
    assert reply.status == 400
    assert (
        "nests JSON arrays or objects more than 64 levels deep" in reply.json()["error"]["message"]
    )
    assert_still_serves(hostile_server)


def test_structure_check_finds_what_the_parser_accepts():
    check_structure({"a": [[[1]]], "b": "text"})  # fine
    with pytest.raises(Exception, match="64 levels"):
        check_structure(json.loads("[" * 70 + "]" * 70), surrogates=False)
    with pytest.raises(Exception, match=r"messages\[1\]\.content"):
        parse_json_body(b'{"messages": [{"content": "ok"}, {"content": "a\\udc00"}]}')
    # A surrogate pair is one character (an emoji), not a lone surrogate.
    assert parse_json_body(b'{"t": "\\ud83d\\ude00"}')["t"] == "\U0001f600"


@pytest.mark.parametrize("ids", [[1, 2, 1_000_000_000], [-5], [2**40]])
def test_echoed_completion_of_token_ids_outside_the_vocabulary_is_a_400(hostile_server, ids):
    """`echo` detokenizes the prompt's ids: the engine refuses bad ones, whatever the order."""
    body = {"model": hostile_server.model_id, "prompt": ids, "echo": True, "max_tokens": 2}
    reply = request(hostile_server.url, "POST", "/v1/completions", body, AUTH)
    assert reply.status == 400
    assert "outside the vocabulary" in reply.json()["error"]["message"]
    if isinstance(hostile_server, ServerProcess):
        assert hostile_server.process.poll() is None  # not aborted
    assert_still_serves(hostile_server)


@pytest.mark.parametrize("ids", [[1, 2, 1_000_000_000], [-5], [49152], [2**40]])
def test_embedding_token_ids_outside_the_vocabulary_are_a_400(hostile_server, ids):
    model = hostile_server.model_id
    if not isinstance(hostile_server, ServerProcess) and ids == [49152]:
        ids = [0x110000]  # the fake vocabulary is every code point
    reply = request(
        hostile_server.url, "POST", "/v1/embeddings", {"model": model, "input": [ids]}, AUTH
    )
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["param"] == "input" and "outside the vocabulary" in error["message"]
    if isinstance(hostile_server, ServerProcess):
        assert hostile_server.process.poll() is None  # not aborted
    good = request(
        hostile_server.url, "POST", "/v1/embeddings", {"model": model, "input": [[1, 2, 3]]}, AUTH
    )
    assert good.status == 200
    assert len(good.json()["data"][0]["embedding"]) == 576
