"""Grammars (llama.cpp GBNF) that force model output to be valid JSON, or JSON of a schema.

Used by the server (`response_format`, forced tool calls) and batch (`--schema`). The schema
converter is llama-cpp-python's port of llama.cpp's `json_schema_to_grammar`, imported lazily.
"""

from __future__ import annotations

import json
from typing import Any

from sovcli.errors import UsageError

# Any JSON object (what OpenAI's `response_format: {"type": "json_object"}` promises).
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
""".strip()


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A GBNF grammar whose every sentence is a JSON document valid against `schema`.

    Raises `UsageError` when the schema cannot be turned into a grammar (bad `$ref`, a
    construct the converter does not support, or not a JSON object at all).
    """
    if not isinstance(schema, dict):
        raise UsageError(
            "the JSON schema must be a JSON object", hint='e.g. {"type": "object", ...}'
        )
    from llama_cpp.llama_grammar import json_schema_to_gbnf as _convert

    try:
        return _convert(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError
        raise UsageError(
            f"cannot build a grammar from the JSON schema: {exc}",
            hint="Use standard JSON Schema (type, properties, required, enum, items, $defs).",
        ) from exc
