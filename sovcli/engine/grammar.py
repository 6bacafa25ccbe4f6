"""Grammars (llama.cpp GBNF) that force model output to be valid JSON, or JSON of a schema.

Used by the server (`response_format`, forced tool calls) and batch (`--schema`). The schema
converter is llama-cpp-python's port of llama.cpp's `json_schema_to_grammar`, imported lazily.

The converter writes repetitions out in full (`minItems: 3000000` is three million copies of
the item rule, ~54 MB of grammar from a 212-byte schema) and nests bounded ones (`maxLength`
beyond ~1,000 is refused by llama.cpp's parser, which then prints the whole grammar), and it
is quadratic in the number of optional properties. So a schema is checked before it is
converted (`check_schema`): each repetition keyword and pattern quantifier at most
`MAX_REPETITION`, their sum at most `MAX_REPETITION_TOTAL`, at most `MAX_PROPERTIES`
properties per object, `MAX_SCHEMA_NODES` subschemas, `MAX_SCHEMA_DEPTH` levels; and the
grammar it gives is refused above `MAX_GRAMMAR_BYTES`.
"""

from __future__ import annotations

import json
import re
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

MAX_REPETITION = 1000  # minItems, maxItems, minLength, maxLength, a pattern's {m,n}
MAX_REPETITION_TOTAL = 20_000  # all of them in one schema
MAX_PROPERTIES = 256  # per object
MAX_SCHEMA_NODES = 10_000  # subschemas in one schema
MAX_SCHEMA_DEPTH = 32  # subschemas inside subschemas
MAX_GRAMMAR_BYTES = 512 * 1024

REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_ONE_SCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_ONE_SCHEMA += ("propertyNames", "additionalItems", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_HINT = "Use smaller bounds (or none) in the schema, or split the task into smaller parts."


def _too_large(what: str, where: str) -> UsageError:
    return UsageError(f"the JSON schema is too large for a grammar: {what} at {where}", hint=_HINT)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The target of a local `$ref` ("#/a/b"), or None."""
    if not ref.startswith("#/"):
        return None
    target: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def _children(node: dict[str, Any], root: dict[str, Any], where: str) -> list[tuple[Any, str]]:
    """The subschemas of `node` with their paths (what the converter visits; the `$ref`
    target is not among them, see `_ref_target`)."""
    found: list[tuple[Any, str]] = [(node.get(key), f"{where}/{key}") for key in _ONE_SCHEMA]
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            found.extend((child, f"{where}/{key}/{i}") for i, child in enumerate(node[key]))
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            found.extend((child, f"{where}/{key}/{name}") for name, child in node[key].items())
    return [(child, path[:200]) for child, path in found if isinstance(child, dict)]


def _ref_target(node: dict[str, Any], root: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The subschema a local `$ref` of `node` points to, with the ref."""
    ref = node.get("$ref")
    target = _resolve(root, ref) if isinstance(ref, str) else None
    return (target, ref[:200]) if isinstance(target, dict) else None


def _repetitions(node: dict[str, Any], where: str) -> int:
    """The repetition count `node` asks for (its keywords and its pattern's quantifiers)."""
    counts = []
    for key in REPETITION_KEYWORDS:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"'{key}' at {where} must be a non-negative integer, got {value!r}")
        if value > MAX_REPETITION:
            raise _too_large(f"'{key}' is {value}, above the limit of {MAX_REPETITION}", where)
        counts.append(value)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        for low, high in _QUANTIFIER.findall(pattern):
            value = max(int(low or 0), int(high or 0))
            if value > MAX_REPETITION:
                raise _too_large(
                    f"the pattern repeats {value} times, above the limit of {MAX_REPETITION}",
                    where,
                )
            counts.append(value)
    return sum(counts)


def check_schema(schema: dict[str, Any]) -> None:
    """Raise `UsageError` when `schema` would give a grammar too large to build or parse.

    Iterative and bounded: a schema is never recursed into; a `$ref` target is counted once
    (the converter makes one rule of it), everything else as often as it appears.
    """
    refs: set[str] = set()
    stack: list[tuple[dict[str, Any], int, str]] = [(schema, 1, "#")]
    total = nodes = 0
    while stack:
        node, depth, where = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise _too_large(f"subschemas nest more than {MAX_SCHEMA_DEPTH} levels deep", where)
        if nodes > MAX_SCHEMA_NODES:
            raise _too_large(f"more than {MAX_SCHEMA_NODES} subschemas", where)
        properties = node.get("properties")
        if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
            raise _too_large(
                f"{len(properties)} properties, above the limit of {MAX_PROPERTIES}", where
            )
        total += _repetitions(node, where)
        if total > MAX_REPETITION_TOTAL:
            raise _too_large(f"repetition bounds add up to over {MAX_REPETITION_TOTAL}", where)
        stack.extend((child, depth + 1, path) for child, path in _children(node, schema, where))
        target = _ref_target(node, schema)
        if target is not None and target[1] not in refs:
            refs.add(target[1])
            stack.append((target[0], depth + 1, target[1]))


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A GBNF grammar whose every sentence is a JSON document valid against `schema`.

    Raises `UsageError` when the schema cannot be turned into a grammar (bad `$ref`, a
    construct the converter does not support, not a JSON object at all) or would give one
    too large to use (see the module docstring).
    """
    if not isinstance(schema, dict):
        raise UsageError(
            "the JSON schema must be a JSON object", hint='e.g. {"type": "object", ...}'
        )
    check_schema(schema)
    from llama_cpp.llama_grammar import json_schema_to_gbnf as _convert

    try:
        grammar = _convert(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError
        raise UsageError(
            f"cannot build a grammar from the JSON schema: {str(exc)[:300]}",
            hint="Use standard JSON Schema (type, properties, required, enum, items, $defs).",
        ) from exc
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise UsageError(
            f"the JSON schema is too large for a grammar: it gives {len(grammar)} bytes of "
            f"grammar, above the limit of {MAX_GRAMMAR_BYTES}",
            hint=_HINT,
        )
    return grammar
