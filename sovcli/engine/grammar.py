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


def _check_lists(node: dict[str, Any], where: str) -> None:
    """`enum`, `anyOf`, `oneOf`, `allOf` and a `type` list must be non-empty lists: an empty
    one admits nothing (an empty grammar rule)."""
    for key in ("enum", "anyOf", "oneOf", "allOf"):
        if key in node and (not isinstance(node[key], list) or not node[key]):
            raise UsageError(
                f"'{key}' at {where} must be a non-empty list",
                hint="An empty list admits no value at all; remove it or list the values.",
            )
    kind = node.get("type")
    if isinstance(kind, list) and not kind:
        raise UsageError(f"'type' at {where} must not be an empty list")


def _leading_refs(node: Any) -> list[str]:
    """The `$ref`s a value of `node` may start with before any character is written
    (through `$ref`, `anyOf`, `oneOf`): a cycle among them is a left-recursive grammar."""
    found: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if not isinstance(current, dict):
            continue
        ref = current.get("$ref")
        if isinstance(ref, str):
            found.append(ref)
            continue
        for key in ("anyOf", "oneOf"):
            if isinstance(current.get(key), list):
                stack.extend(current[key])
    return found


def _check_left_recursion(schema: dict[str, Any]) -> None:
    """A `$ref` that can reach itself before writing anything (`{"$ref": "#/$defs/a"}` with
    `a` = `{"anyOf": [{"$ref": "#/$defs/a"}, ...]}`) would loop forever: llama.cpp refuses
    such grammars, so say so here, before any request is decoded."""
    pending = [(ref, (ref,)) for ref in _leading_refs(schema)]
    done: set[str] = set()
    while pending:
        ref, path = pending.pop()
        if ref in done:
            continue
        target = _resolve(schema, ref)
        for nxt in _leading_refs(target):
            if nxt in path:
                chain = " -> ".join((*path, nxt))[:300]
                raise UsageError(
                    f"the JSON schema refers to itself without end: {chain}",
                    hint="Put a recursive $ref inside an object's properties or array's items.",
                )
            if len(path) < MAX_SCHEMA_DEPTH:
                pending.append((nxt, (*path, nxt)))
        done.add(ref)


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
        _check_lists(node, where)
        total += _repetitions(node, where)
        if total > MAX_REPETITION_TOTAL:
            raise _too_large(f"repetition bounds add up to over {MAX_REPETITION_TOTAL}", where)
        stack.extend((child, depth + 1, path) for child, path in _children(node, schema, where))
        target = _ref_target(node, schema)
        if target is not None and target[1] not in refs:
            refs.add(target[1])
            stack.append((target[0], depth + 1, target[1]))
    _check_left_recursion(schema)


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
    try:
        grammar = _convert(schema)
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


def _convert(schema: dict[str, Any]) -> str:
    """llama-cpp-python's converter, with what makes it admit invalid JSON replaced:

    - its string character admits raw control characters (a newline inside a string): here
      U+0000-U+001F and U+007F only come escaped, as in `JSON_OBJECT_GBNF`;
    - its literals (`const`, `enum`, property names) do not escape backslashes, so `"a\\nb"`
      became a raw newline: here every literal is written exactly;
    - its type lists (`"type": ["string", "null"]`) drop the other keywords (`maxLength`):
      here each alternative keeps them;
    - its patterns copy the regular expression into the grammar (`.` admits `"`, `\\d`
      is not understood): here `pattern_grammar` translates them to JSON-safe GBNF.
    """
    from llama_cpp import llama_grammar as lg

    from sovcli.engine.pattern_grammar import JSON_CHAR, PatternTranslator, gbnf_literal

    class SafeConverter(lg.SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            return gbnf_literal(literal)

        def _generate_constant_rule(self, value: Any) -> str:
            return gbnf_literal(json.dumps(value, ensure_ascii=False))

        def _add_primitive(self, name: str, rule: Any) -> str:
            if name == "char":
                rule = lg.BuiltinRule(JSON_CHAR, [])
            return super()._add_primitive(name, rule)

        def resolve_refs(self, schema: dict[str, Any], url: str) -> dict[str, Any]:
            # Local refs only, and every node visited (upstream skips the siblings of a
            # `$ref`, so a root `{"$ref": ..., "$defs": {...}}` with a recursive
            # definition failed).
            stack: list[Any] = [schema]
            while stack:
                node = stack.pop()
                if isinstance(node, list):
                    stack.extend(node)
                    continue
                if not isinstance(node, dict):
                    continue
                ref = node.get("$ref")
                if isinstance(ref, str):
                    target = _resolve(schema, ref)
                    if target is None:
                        raise ValueError(f"unsupported or missing $ref {ref[:100]!r}")
                    node["$ref"] = url + ref
                    self._refs[url + ref] = target
                stack.extend(v for k, v in node.items() if k != "$ref")
            return schema

        def visit(self, schema: dict[str, Any], name: str) -> str:
            kinds = schema.get("type")
            if isinstance(kinds, list) and not {"$ref", "oneOf", "anyOf"} & schema.keys():
                # Each alternative keeps the other keywords (maxLength of a "string|null").
                rule_name = name + "-" if name in lg.RESERVED_NAMES else name or "root"
                union = [{**schema, "type": kind} for kind in kinds]
                return self._add_rule(rule_name, self._generate_union_rule(name, union))
            return super().visit(schema, name)

        def _visit_pattern(self, pattern: str, name: str) -> str:
            translator = PatternTranslator(pattern, name)
            expression = translator.translate()
            for rule_name, rule in translator.rules.items():
                self._rules[rule_name] = rule
            return self._add_rule(name, expression)

    converter = SafeConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "stdin")
    converter.visit(resolved, "")
    return converter.format_grammar()
