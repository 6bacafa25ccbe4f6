"""The journal (append, torn-line repair, resume index), chunking, prompt templates, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sovcli.batch.chunk import chunk_text, estimate_tokens
from sovcli.batch.journal import Journal, record_key
from sovcli.batch.prompt import PromptTemplate
from sovcli.batch.report import render_report
from sovcli.batch.schema import merge_values, validate
from sovcli.errors import UsageError


def _record(path: str, sha: str = "a" * 64, status: str = "ok", **extra) -> dict:
    record = {
        "path": path,
        "sha256": sha,
        "model": {"ref": "m:local", "file_sha256": "f" * 64},
        "prompt_sha256": "p",
        "params_sha256": "q",
        "status": status,
        "output": f"summary of {path}",
    }
    record.update(extra)
    return record


def test_journal_appends_one_line_per_record_and_indexes_them(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out) as journal:
        journal.append(_record("a.txt"))
        journal.append(_record("b.txt", status="error", error_kind="input"))
    lines = out.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a.txt", "b.txt"]
    with Journal.open(out) as journal:
        assert journal.is_done(record_key(_record("a.txt")))
        assert journal.is_done(record_key(_record("b.txt")))  # an input error is final
        assert not journal.is_done(record_key(_record("a.txt", sha="b" * 64)))  # changed
        assert journal.outdated_for(record_key(_record("a.txt", sha="b" * 64))) is not None


def test_torn_last_line_is_cut_back_to_the_last_complete_record(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out) as journal:
        journal.append(_record("a.txt"))
        journal.append(_record("b.txt"))
    good = out.read_bytes()
    torn = json.dumps(_record("c.txt")).encode()[:37]  # killed mid-write
    out.write_bytes(good + torn)
    with Journal.open(out) as journal:
        assert journal.repaired_bytes == len(torn)
        assert len(journal.index) == 2
        journal.append(_record("c.txt"))
    lines = out.read_bytes().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a.txt", "b.txt", "c.txt"]


def test_unparseable_last_line_is_repaired_too(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out) as journal:
        journal.append(_record("a.txt"))
    out.write_bytes(out.read_bytes() + b'{"path": "b.txt", "sta\x00\x00\x00\n')
    with Journal.open(out) as journal:
        assert journal.repaired_bytes > 0
    assert out.read_bytes().count(b"\n") == 1


def test_a_file_that_is_not_a_results_file_is_never_truncated(tmp_path: Path) -> None:
    out = tmp_path / "important.csv"
    out.write_text("name,iban\nAlice,DE89")
    with pytest.raises(UsageError, match="not a sovcli batch results file"):
        Journal.open(out)
    assert out.read_text() == "name,iban\nAlice,DE89"


def test_two_writers_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out), pytest.raises(UsageError, match="another sovcli batch"):
        Journal.open(out)


def test_remove_lines_rewrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out) as journal:
        for name in ("a", "b", "c"):
            journal.append(_record(name))
        assert journal.remove_lines({1}) == 1
        journal.append(_record("b", sha="c" * 64))
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == ["a", "c", "b"]


def _count_words(text: str) -> int:
    return len(text.split())


def test_chunks_fit_cover_the_text_and_overlap() -> None:
    text = "\n\n".join(" ".join(f"w{p}_{i}" for i in range(30)) for p in range(20))
    chunks = chunk_text(text, max_tokens=100, count_tokens=_count_words, overlap_tokens=30)
    assert len(chunks) > 1
    assert all(_count_words(c) <= 100 for c in chunks)
    for p in range(20):  # every paragraph is in some chunk
        assert any(f"w{p}_0 " in c for c in chunks)
    # consecutive chunks share a paragraph (the overlap)
    assert any(chunks[0].split("\n\n")[-2] in chunks[1] for _ in [0])


def test_text_without_breaks_is_still_split() -> None:
    text = "x" * 10_000
    chunks = chunk_text(text, max_tokens=100, count_tokens=estimate_tokens)
    assert "".join(chunks) == text
    assert all(estimate_tokens(c) <= 100 for c in chunks)


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("hello world", 100, _count_words, 10) == ["hello world"]


def test_prompt_template_fills_only_known_variables() -> None:
    template = PromptTemplate('Summarise {name} as JSON like {"a": 1}: {text} {{name}}')
    rendered = template.render(text="DOC", name="a.pdf", path="x/a.pdf")
    assert rendered == 'Summarise a.pdf as JSON like {"a": 1}: DOC {name}'
    # no attribute access or format-spec tricks: such braces stay literal text
    tricky = PromptTemplate("{text.__class__} {text!r} {text:>99}")
    assert tricky.render(text="T", name="n", path="p") == (
        "{text.__class__} {text!r} {text:>99}\n\nT"
    )
    assert PromptTemplate("Classify:").render(text="T", name="n", path="p") == "Classify:\n\nT"


def test_prompt_template_rejects_unknown_variable() -> None:
    with pytest.raises(UsageError, match=r"unknown variable \{document\}"):
        PromptTemplate("Summarise {document}")


def test_merge_and_validate_extractions() -> None:
    merged = merge_values(
        [
            {"name": "Alice", "iban": None, "accounts": ["A1"]},
            {"name": "unknown", "iban": "DE89", "accounts": ["A1", "B2"]},
        ]
    )
    assert merged == {"name": "Alice", "iban": "DE89", "accounts": ["A1", "B2"]}
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["name"],
    }
    assert validate({"name": "x", "n": 3}, schema) is None
    assert "missing required key 'name'" in validate({"n": 3}, schema)
    assert "expected integer" in validate({"name": "x", "n": "3"}, schema)


def test_reports_show_one_row_per_document(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with Journal.open(out) as journal:
        journal.append(_record("a.txt", output={"name": "Alice", "iban": "DE89"}, chunks=1))
        journal.append(
            _record("b|x.pdf", status="error", output=None, error="corrupt PDF: bad", chunks=0)
        )
    csv_text = render_report(out, "csv")
    assert csv_text.splitlines()[0] == (
        "path,status,finish,chunks,prompt_tokens,completion_tokens,seconds,output.name,"
        "output.iban,error"
    )
    assert "a.txt,ok,,1,,,,Alice,DE89," in csv_text
    md = render_report(out, "md")
    assert "2 documents: 1 ok, 1 failed." in md
    assert "| b\\|x.pdf | error |" in md


def _cli(*args: str):
    from typer.testing import CliRunner

    from sovcli.cli.main import app

    return CliRunner().invoke(app, ["batch", *args])


def test_bad_command_lines_get_one_line_errors(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello")
    out = str(tmp_path / "r.jsonl")
    both = _cli("m.gguf", str(docs), "-o", out, "--prompt", "x", "--prompt-file", "p.txt")
    assert both.exit_code == 2 and "exactly one of --prompt or --prompt-file" in both.output
    unknown = _cli("m.gguf", str(docs), "-o", out, "--prompt", "Summarise {doc}")
    assert unknown.exit_code == 2 and "unknown variable {doc}" in unknown.output
    missing = _cli("m.gguf", str(tmp_path / "nope"), "-o", out, "--prompt", "{text}")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert "Traceback" not in both.output + unknown.output + missing.output


def test_unreachable_endpoint_fails_fast_and_writes_nothing(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello")
    out = tmp_path / "r.jsonl"
    result = _cli(
        "smollm2", str(docs), "-o", str(out), "--prompt", "{text}",
        "--endpoint", "http://127.0.0.1:9",
    )  # fmt: skip
    assert result.exit_code == 5, result.output
    assert "unreachable" in result.output
    assert not out.exists() or out.read_bytes() == b""
