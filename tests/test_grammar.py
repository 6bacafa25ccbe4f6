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
