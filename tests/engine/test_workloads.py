"""The benchmark workloads (sovcli/engine/workloads.py): deterministic, sized, well-formed."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from sovcli.engine import workloads
from sovcli.engine.workloads import (
    WorkloadRequest,
    chat_requests,
    document_requests,
    sample_documents,
)

# A sanity bound on size; the token budget itself (< 900 SmolLM2 tokens, rendered) is checked
# by the slow test below. Measured over 700 document requests: at most 2877 characters and
# 701 tokens.
MAX_PROMPT_CHARS = 3000


def prompt_chars(request: WorkloadRequest) -> int:
    return sum(len(m["content"]) for m in request.messages)


def test_same_seed_same_requests_and_prefix_stable() -> None:
    assert document_requests(12, seed=3) == document_requests(12, seed=3)
    assert chat_requests(12, seed=3) == chat_requests(12, seed=3)
    # Request i depends only on (seed, i): a short run is a prefix of a long one.
    assert document_requests(20, seed=3)[:7] == document_requests(7, seed=3)
    assert chat_requests(20, seed=3)[:7] == chat_requests(7, seed=3)


def test_other_seed_other_requests() -> None:
    a, b = document_requests(6, seed=0), document_requests(6, seed=1)
    assert all(x.messages != y.messages for x, y in zip(a, b, strict=True))
    assert chat_requests(8, seed=0) != chat_requests(8, seed=1)


@pytest.mark.parametrize("n", [0, 1, 5, 31])
def test_sizes(n: int) -> None:
    assert len(document_requests(n)) == n
    assert len(chat_requests(n)) == n


def test_document_kinds_cycle_and_limits() -> None:
    requests = document_requests(30, seed=5)
    assert [r.kind for r in requests[:6]] == ["extract", "summary", "rewrite"] * 2
    for r in requests:
        assert 128 <= r.max_tokens <= 200
        assert (r.schema is not None) == (r.kind == "extract")
        assert [m["role"] for m in r.messages] == ["system", "user"]
        assert prompt_chars(r) < MAX_PROMPT_CHARS
    # Every document type shows up in a run of 15 or more.
    assert {d.kind for d in sample_documents(15)} == {
        "kyc",
        "invoice",
        "batch_release",
        "policy",
        "minutes",
    }


def test_chat_requests_are_short_questions_without_repeats() -> None:
    requests = chat_requests(len(workloads.CHAT_PROMPTS), seed=2)
    assert {r.kind for r in requests} == {"chat"}
    assert all(96 <= r.max_tokens <= 128 for r in requests)
    questions = [r.messages[-1]["content"] for r in requests]
    assert sorted(questions) == sorted(workloads.CHAT_PROMPTS)  # a permutation: all, once
    assert all(prompt_chars(r) < 400 for r in requests)


def test_documents_are_150_to_400_words_and_hold_their_fields() -> None:
    for doc in sample_documents(40, seed=11):
        words = sum(len(p.split()) for p in doc.paragraphs)
        assert 150 <= words <= 400, (doc.kind, words)
        assert len(doc.fields) >= 8
        for name, value in doc.fields.items():
            assert value and value in doc.text, (doc.kind, name, value)


def test_ibans_have_valid_check_digits() -> None:
    ibans = [d.fields["iban"] for d in sample_documents(20) if "iban" in d.fields]
    assert len(ibans) >= 6
    for iban in ibans:
        raw = iban.replace(" ", "")
        assert re.fullmatch(r"[A-Z]{2}\d{2}\d+", raw)
        moved = raw[4:] + raw[:4]
        assert int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def test_extract_schema_is_valid_and_matches_the_copied_values() -> None:
    docs = sample_documents(30, seed=4)
    for doc, request in zip(docs, document_requests(30, seed=4), strict=True):
        if request.kind != "extract":
            continue
        schema = request.schema
        jsonschema.Draft202012Validator.check_schema(schema)
        fields = schema["properties"]
        assert 4 <= len(fields) <= 8
        assert schema["required"] == list(fields)
        # The right answer, copied from the document, validates; a missing field does not.
        answer = {name: doc.fields[name] for name in fields}
        jsonschema.validate(answer, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(dict(list(answer.items())[1:]), schema)
        # The prompt names the fields and carries the document.
        prompt = request.messages[-1]["content"]
        assert ", ".join(fields) in prompt and doc.text in prompt


def test_rewrite_has_typos_but_keeps_names_and_numbers() -> None:
    docs = sample_documents(30, seed=8)
    for doc, request in zip(docs, document_requests(30, seed=8), strict=True):
        if request.kind != "rewrite":
            continue
        text = request.messages[-1]["content"].split("\n\n", 1)[1]
        assert text not in doc.text  # typos were added ...
        for token in re.findall(r"\S*\d\S*|[A-Z][a-z]+", text):  # ... but not to these
            assert token in doc.text, token


def test_openai_body() -> None:
    extract = document_requests(1)[0]
    body = extract.openai_body("m")
    assert body["temperature"] == 0.0 and body["max_tokens"] == extract.max_tokens
    assert body["response_format"]["json_schema"]["schema"] == extract.schema
    json.dumps(body)  # serialisable as it is
    assert "response_format" not in chat_requests(1)[0].openai_body("m", temperature=0.7)


@pytest.mark.slow
def test_prompts_fit_smollm2_budget(engine) -> None:
    """Rendered with the model's chat template, every prompt is under 900 tokens."""
    requests = document_requests(60, seed=0) + chat_requests(20, seed=0)
    counts = [len(engine.tokenize(engine.render_chat(r.messages))) for r in requests]
    assert max(counts) < 900, max(counts)
