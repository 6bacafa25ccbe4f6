"""JSON grammars: schema conversion and its errors (generation is tested by server and batch)."""

from __future__ import annotations

import pytest

from sovcli.engine.grammar import JSON_OBJECT_GBNF, json_schema_to_gbnf
from sovcli.errors import UsageError


def test_schema_becomes_a_grammar_with_every_property() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    grammar = json_schema_to_gbnf(schema)
    assert grammar.splitlines()[0].split("::=")[0].strip() in {"age-kv", "root", "char"}
    assert "root ::=" in grammar
    assert '"\\"name\\""' in grammar and '"\\"age\\""' in grammar


def test_json_object_grammar_has_a_root() -> None:
    assert JSON_OBJECT_GBNF.startswith("root")


@pytest.mark.parametrize("bad", [["not", "an", "object"], {"$ref": "#/$defs/missing"}])
def test_bad_schema_is_a_usage_error(bad: object) -> None:
    with pytest.raises(UsageError):
        json_schema_to_gbnf(bad)  # type: ignore[arg-type]


# ---- grammars admit only valid JSON -------------------------------------------------------
def _rule(grammar: str, name: str) -> str:
    return next(line for line in grammar.splitlines() if line.startswith(f"{name} ::="))


def test_string_characters_exclude_raw_control_characters() -> None:
    grammar = json_schema_to_gbnf({"type": "object", "properties": {"a": {"type": "string"}}})
    char = _rule(grammar, "char")
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F]')  # as JSON_OBJECT_GBNF's strings
    assert r'[^"\\\x7F\x00-\x1F]' in JSON_OBJECT_GBNF


def test_type_lists_keep_the_other_keywords() -> None:
    grammar = json_schema_to_gbnf({"type": ["string", "null"], "maxLength": 3})
    assert "(char (char (char)?)?)?" in grammar and '"null"' in grammar


def test_literals_are_escaped_exactly() -> None:
    schema = {"enum": ["a\nb", 'say "hi"', "back\\slash", "é"], "type": "string"}
    root = _rule(json_schema_to_gbnf(schema), "root")
    # The JSON text of each value, as a GBNF literal: backslashes doubled, quotes escaped.
    assert r'"\"a\\nb\""' in root
    assert r'"\"say \\\"hi\\\"\""' in root
    assert r'"\"back\\\\slash\""' in root
    assert '"\\"é\\""' in root  # non-ASCII written as itself


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"^\d{3}$", "(([0-9])){3}"),
        (r"^[A-Z]+$", "(([A-Z]))+"),
        ('^a"b$', r'"\\\""'),  # a quote in the value is written \" in JSON
        (r"^a\\b$", r'"\\\\"'),  # a backslash in the value is written \\ in JSON
        (r"^a.b$", "json-dot"),
        (r"^[^x]$", r'[^"\\\x7F\x00-\x1Fx]'),
        (r"^(?:ab|c)*$", '("a" "b" | "c")'),
        ("abc", "json-dot* "),  # unanchored: anything around it
    ],
)
def test_patterns_become_json_safe_grammar(pattern: str, expected: str) -> None:
    grammar = json_schema_to_gbnf({"type": "string", "pattern": pattern})
    assert expected in grammar
    dot = [line for line in grammar.splitlines() if line.startswith("json-dot ::=")]
    assert not dot or dot[0].startswith(r'json-dot ::= [^"\\\x7F\x00-\x1F]')


@pytest.mark.parametrize("pattern", ["^(?=a)b$", r"^\bword$", "^a(b$", "^a)b$", "^[a$", r"^(a)\1$"])
def test_unsupported_patterns_are_usage_errors(pattern: str) -> None:
    with pytest.raises(UsageError):
        json_schema_to_gbnf({"type": "string", "pattern": pattern})


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": []},
        {"anyOf": []},
        {"oneOf": []},
        {"type": []},
        {"enum": "abc"},
        {"type": "object", "properties": {"a": {"enum": []}}},
    ],
)
def test_schemas_that_admit_nothing_are_usage_errors(schema: dict) -> None:
    with pytest.raises(UsageError, match=r"non-empty|empty list"):
        json_schema_to_gbnf(schema)


# ---- the real model under these grammars (slow) -------------------------------------------
SHAPES: list[tuple[str, dict]] = [
    (
        "a person as JSON",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer"},
                "email": {"type": "string", "maxLength": 30},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    ),
    (
        "an order with items",
        {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^[A-Z]{2}-\\d{4}$"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "maxLength": 8},
                            "qty": {"type": "integer"},
                            "price": {"type": "number"},
                        },
                        "required": ["sku", "qty"],
                    },
                    "minItems": 1,
                    "maxItems": 3,
                },
            },
            "required": ["id", "items"],
        },
    ),
    (
        "a status with a note",
        {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", 'quoted "x"', "line\nbreak", "back\\slash", "café"]},
                "note": {"type": ["string", "null"], "maxLength": 40},
                "flag": {"type": "boolean"},
            },
            "required": ["status", "note", "flag"],
        },
    ),
    (
        "a poem of several lines",
        {
            "type": "object",
            "properties": {"poem": {"type": "string", "maxLength": 160}},
            "required": ["poem"],
        },
    ),
    (
        "tags and a date",
        {
            "type": "object",
            "properties": {
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 12},
                    "maxItems": 4,
                },
                "when": {"type": "string", "format": "date"},
                "kind": {"const": "event"},
                "ref": {"$ref": "#/$defs/ref"},
            },
            "required": ["tags", "when", "kind", "ref"],
            "$defs": {"ref": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 6}]}},
        },
    ),
    (
        "a free string with odd characters",
        {"type": "string", "pattern": "^[ -~\\t\\n]{1,40}$"},
    ),
    (
        "scores by name",
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 10},
                    "score": {"type": "number"},
                },
                "required": ["name", "score"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
    ),
]
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def grammar_engine(smollm2_gguf):
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    engine = Engine(
        EngineConfig(model_path=str(smollm2_gguf), n_parallel=4, n_ctx=1024, n_threads=1)
    )
    yield engine
    engine.close()


@pytest.mark.slow
@pytest.mark.parametrize(("task", "schema"), SHAPES, ids=[s[0] for s in SHAPES])
def test_every_output_under_a_schema_grammar_parses_and_validates(grammar_engine, task, schema):
    """Sampled at temperature 1 with no top-k/top-p cut, so the model tries what a grammar
    must forbid; every output that ends (not cut by max_tokens) parses and validates."""
    import json

    import jsonschema

    from sovcli.engine.types import GenerationRequest, SamplingParams

    grammar = json_schema_to_gbnf(schema)
    prompt = grammar_engine.render_chat(
        [{"role": "user", "content": f"Write {task}. Use quotes, backslashes and newlines."}]
    )
    requests = [
        GenerationRequest(
            prompt,
            max_tokens=400,
            sampling=SamplingParams(
                temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed, grammar=grammar
            ),
        )
        for seed in SEEDS
    ]
    streams = grammar_engine.submit_many(requests)
    results = [stream.result(timeout=300) for stream in streams if list(stream) is not None]
    finished = [r for r in results if r.finish_reason == "stop"]
    assert len(finished) >= 2, [(r.finish_reason, r.text[-80:]) for r in results]
    for result in finished:
        value = json.loads(result.text)
        jsonschema.validate(value, schema)


def test_recursive_definitions_behind_a_root_ref_convert() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "next": {"$ref": "#/$defs/node"}},
            }
        },
        "$ref": "#/$defs/node",
    }
    grammar = json_schema_to_gbnf(schema)
    assert "next" in grammar and "root ::=" in grammar


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {
            "$defs": {
                "a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "string"}]},
                "b": {"$ref": "#/$defs/a"},
            },
            "$ref": "#/$defs/a",
        },
    ],
)
def test_left_recursive_refs_are_usage_errors(schema: dict) -> None:
    with pytest.raises(UsageError, match="refers to itself"):
        json_schema_to_gbnf(schema)


def test_pattern_class_ranges_of_escapes_become_json_escapes() -> None:
    grammar = json_schema_to_gbnf({"type": "string", "pattern": r"^[\x00-\x02a]$"})
    assert r'"\\u0000" | "\\u0001" | "\\u0002"' in grammar and "[a]" in grammar
