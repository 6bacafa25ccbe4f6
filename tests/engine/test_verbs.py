"""The verbs ollama and llm users reach for, through the CLI in a subprocess: a created model
used by run, serve and batch; `run --format json` / `--schema`; `-o key value`; `run -c`
with `--save`; `embed`; a default model; `run -a FILE`.

Tests that load the real model are marked slow. Comparisons are within one kernel and one
configuration (the same prompt through two routes), never across quantizations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

SYSTEM = "You are a pirate. Answer like a pirate."
THREADS = ("--threads", "1")


def cli(*args: str, stdin: str = ""):
    """The CLI in this process (fast: for refusals that happen before any model loads)."""
    from typer.testing import CliRunner

    from sovcli.cli.main import app

    return CliRunner().invoke(app, list(args), input=stdin)


def sovcli(*args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 600):
    """`python -m sovcli ARGS` with stdin a pipe (never a terminal: no chat opens)."""
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _stats(stderr: str) -> dict[str, int]:
    """Prompt and generated token counts from a `--stats` line."""
    prompt = re.search(r"prompt: (\d+) tokens", stderr)
    generated = re.search(r"generation: (\d+) tokens", stderr)
    assert prompt and generated, stderr
    return {"prompt": int(prompt.group(1)), "generated": int(generated.group(1))}


@pytest.fixture
def pirate(installed_smollm2, tmp_path: Path) -> str:
    """`pirate`, created from smollm2-135m with a system prompt and greedy, short replies."""
    spec = tmp_path / "pirate.toml"
    spec.write_text(
        f'system = "{SYSTEM}"\n[parameters]\ntemperature = 0\nmax_tokens = 6\nctx = 512\n',
        encoding="utf-8",
    )
    made = sovcli("create", "pirate", "--from", "smollm2-135m", "-f", str(spec))
    assert made.returncode == 0, made.stderr
    assert "created pirate:latest from smollm2-135m:Q4_1" in made.stderr
    return "pirate"


# --------------------------------------------------------------------------- fast: refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "temprature", "0"], "-o temprature: unknown setting (did you mean temperature?)"),
        (["-o", "top_k", "many"], "-o top_k takes a whole number, not 'many'"),
        (["-o", "top_p", "0"], "-o top_p must be > 0 and <= 1, not 0"),
        (["-o", "temperature", "nan"], "-o temperature takes a finite number"),
        (["-o", "ctx", "8"], "-o ctx must be >= 64"),
        (["--temperature", "0", "-o", "temperature", "1"], "temperature is given twice"),
        (["-o", "top_k"], "-o top_k needs a value"),
        (["-o", "top_k=3", "-o", "top_k", "x"], "-o top_k takes a whole number, not 'x'"),
        (["--format", "yaml"], "--format 'yaml' is not known"),
        (["--raw", "-c"], "--raw cannot be used with -a or -c"),
    ],
)
def test_bad_settings_are_refused_before_any_model_loads(args: list[str], message: str) -> None:
    result = cli("run", "no-such-model-here", "hi", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_schema_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object", "properties": {"x": {"$ref": "#/nope"}}}')
    result = cli("run", "no-such-model-here", "hi", "--schema", str(schema))
    assert result.exit_code == 2 and "error:" in result.stderr, result.stderr
    schema.write_text("[1, 2]")
    result = cli("run", "no-such-model-here", "hi", "--schema", str(schema))
    assert result.exit_code == 2 and "must be a JSON object" in result.stderr


def test_no_model_and_no_default_is_a_clear_error() -> None:
    result = cli("run", "What is the capital of France?")
    assert result.exit_code == 2
    assert "is not a model and SOVCLI_DEFAULT_MODEL is not set" in result.stderr
    assert "export SOVCLI_DEFAULT_MODEL=" in result.stderr
    result = cli("embed", stdin="some text")
    assert result.exit_code == 2 and "SOVCLI_DEFAULT_MODEL is not set" in result.stderr


def test_continue_without_a_saved_conversation(isolated_env: Path) -> None:
    result = cli("run", "-c", "and then?")
    assert result.exit_code == 2
    assert "there is no saved conversation to continue" in result.stderr
    assert "--save" in result.stderr


def test_a_saved_conversation_that_is_not_one_is_refused(isolated_env: Path) -> None:
    folder = isolated_env / "conversations"
    folder.mkdir(parents=True)
    (folder / "last.json").write_text('{"model": "x", "messages": [{"role": "root"}]}')
    result = cli("run", "-c", "and then?")
    assert result.exit_code == 2 and "is not a saved conversation" in result.stderr


def test_attachments_that_cannot_be_read(tmp_path: Path) -> None:
    missing = cli("run", "no-such-model-here", "-a", str(tmp_path / "nope.pdf"), "what?")
    assert missing.exit_code == 2 and "-a nope.pdf: the file does not exist" in missing.stderr
    odd = tmp_path / "data.xyz"
    odd.write_bytes(b"\x00\x01")
    result = cli("run", "no-such-model-here", "-a", str(odd), "what?")
    assert result.exit_code == 2 and "unsupported file type .xyz" in result.stderr
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not a pdf")
    result = cli("run", "no-such-model-here", "-a", str(broken), "what?")
    assert result.exit_code == 2 and "-a broken.pdf: cannot read the document" in result.stderr


# --------------------------------------------------------------------------- created models


@pytest.mark.slow
def test_run_applies_a_created_models_preset_and_flags_override_it(pirate: str) -> None:
    created = sovcli("run", pirate, "Where is the treasure?", "--stats", *THREADS)
    assert created.returncode == 0, created.stderr
    same = sovcli(
        "run", "smollm2-135m", "Where is the treasure?", "--system", SYSTEM,
        "--temperature", "0", "--max-tokens", "6", "--ctx", "512", "--stats", *THREADS,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    # the same prompt (system prompt included) and settings: the same greedy reply
    assert created.stdout == same.stdout
    assert _stats(created.stderr) == _stats(same.stderr)
    assert _stats(created.stderr)["generated"] == 6  # the preset's max_tokens
    base = sovcli(
        "run", "smollm2-135m", "Where is the treasure?", "--stats", "--max-tokens", "1", *THREADS
    )
    # without it the template's own default system prompt is used: another prompt
    assert _stats(base.stderr)["prompt"] != _stats(created.stderr)["prompt"]
    flag = sovcli("run", pirate, "Where is the treasure?", "--max-tokens", "3", "--stats", *THREADS)
    assert _stats(flag.stderr)["generated"] == 3
    option = sovcli(
        "run", pirate, "Where is the treasure?", "-o", "max_tokens", "2", "--stats", *THREADS
    )
    assert _stats(option.stderr)["generated"] == 2


@pytest.mark.slow
def test_a_created_models_chat_template_is_used(installed_smollm2, tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    spec = tmp_path / "plain.toml"
    spec.write_text(f'template = "{template}"\n[parameters]\ntemperature = 0\nmax_tokens = 8\n')
    assert sovcli("create", "plain", "--from", "smollm2-135m", "-f", str(spec)).returncode == 0
    created = sovcli("run", "plain", "Name a colour.", "--stats", *THREADS)
    raw = sovcli(
        "run", "smollm2-135m", "--raw", "user: Name a colour.\nassistant:",
        "--temperature", "0", "--max-tokens", "8", "--stats", *THREADS,
    )  # fmt: skip
    assert created.returncode == 0 and raw.returncode == 0, created.stderr + raw.stderr
    assert created.stdout == raw.stdout
    assert _stats(created.stderr)["prompt"] == _stats(raw.stderr)["prompt"]


def _start_server(model: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sovcli", "serve", model, "--port", "0", *THREADS],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)/v1", log_path.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server did not start: {log_path.read_text()}")


@pytest.mark.slow
def test_serve_applies_a_created_models_preset_as_defaults(pirate: str, tmp_path: Path) -> None:
    from ollama import Client as OllamaClient
    from openai import OpenAI

    process, url = _start_server(pirate, tmp_path)
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=30, timeout=300)
        question = [{"role": "user", "content": "Where is the treasure?"}]
        reply = client.chat.completions.create(model=pirate, messages=question)
        # the preset's max_tokens, and its system prompt in the prompt
        assert reply.usage.completion_tokens == 6
        assert reply.choices[0].finish_reason == "length"
        with_system = [{"role": "system", "content": SYSTEM}, *question]
        explicit = client.chat.completions.create(model=pirate, messages=with_system)
        assert explicit.usage.prompt_tokens == reply.usage.prompt_tokens
        # what the request sets wins over the preset
        other = [{"role": "system", "content": "Be brief."}, *question]
        short = client.chat.completions.create(model=pirate, messages=other, max_tokens=2)
        assert short.usage.completion_tokens == 2
        assert short.usage.prompt_tokens != reply.usage.prompt_tokens
        text = client.completions.create(model=pirate, prompt="Once upon a time")
        assert text.usage.completion_tokens == 6
        # the Responses API and the Ollama API (official clients) take it too
        response = client.responses.create(model=pirate, input="Where is the treasure?")
        assert response.usage.output_tokens == 6
        assert response.instructions == SYSTEM
        assert response.usage.input_tokens == reply.usage.prompt_tokens
        ollama = OllamaClient(host=url, timeout=300)
        chat = ollama.chat(model=pirate, messages=question)
        assert chat.eval_count == 6 and chat.prompt_eval_count == reply.usage.prompt_tokens
        generated = ollama.generate(model=pirate, prompt="Where is the treasure?")
        assert generated.eval_count == 6
        assert generated.prompt_eval_count == reply.usage.prompt_tokens
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.slow
def test_batch_applies_a_created_models_system_prompt(pirate: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("The meeting moved to Tuesday because the room was booked.")
    counts = {}
    for model in ("smollm2-135m", pirate):
        out = tmp_path / f"{model}.jsonl"
        result = sovcli(
            "batch", model, str(docs), "-o", str(out), "--prompt", "Summarise: {text}",
            "--max-tokens", "4", "--parallel", "1", "--quiet", *THREADS,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        done = [r for r in records if r.get("status") == "ok" or r.get("output")]
        assert len(done) == 1, records
        counts[model] = done[0]["tokens"]["prompt"]
    # the same document and prompt; the created model's system prompt replaces the
    # template's default one (SmolLM2's), so the prompt differs
    assert counts[pirate] != counts["smollm2-135m"]


# --------------------------------------------------------------------------- run options


@pytest.mark.slow
def test_format_json_and_schema_give_json_that_parses(installed_smollm2, tmp_path: Path) -> None:
    result = sovcli(
        "run", "smollm2-135m", "Describe a cat as JSON.", "--format", "json",
        "--temperature", "0", "--max-tokens", "200", *THREADS,
    )  # fmt: skip
    if result.returncode == 1:  # the grammar held, but 200 tokens were not enough to close it
        assert "cut off at the token limit" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), dict)
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    path = tmp_path / "colour.json"
    path.write_text(json.dumps(schema))
    for seed in ("1", "2", "3"):
        result = sovcli(
            "run", "smollm2-135m", "Pick a colour and a count.", "--schema", str(path),
            "-o", "seed", seed, "-o", "max_tokens", "60", *THREADS,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        value = json.loads(result.stdout)
        assert value["colour"] in ("red", "green", "blue") and 0 <= value["count"] <= 9
        assert set(value) == {"colour", "count"}


@pytest.mark.slow
def test_save_and_continue_keep_a_conversation_only_when_asked(
    installed_smollm2, isolated_env: Path
) -> None:
    folder = isolated_env / "conversations"
    args = ("-o", "temperature", "0", "-o", "max_tokens", "8", *THREADS)
    plain = sovcli("run", "smollm2-135m", "My name is Ada.", *args)
    assert plain.returncode == 0 and not folder.exists()  # never kept by default
    saved = sovcli("run", "smollm2-135m", "My name is Ada.", "--save", *args)
    assert saved.returncode == 0, saved.stderr
    path = folder / "last.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    first = json.loads(path.read_text())
    assert first["model"] == "smollm2-135m:Q4_1"
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"] == saved.stdout.rstrip("\n")
    # -c: no model named (the conversation's), the history sent, the turn kept
    again = sovcli("run", "-c", "What is my name?", "--stats", *args)
    assert again.returncode == 0, again.stderr
    history = json.loads(path.read_text())["messages"]
    assert [m["content"] for m in history[:2]] == [m["content"] for m in first["messages"]]
    assert history[2] == {"role": "user", "content": "What is my name?"}
    assert history[3]["role"] == "assistant"
    alone = sovcli("run", "smollm2-135m", "What is my name?", "--stats", *args)
    assert _stats(again.stderr)["prompt"] > _stats(alone.stderr)["prompt"]
    # the setting keeps conversations without --save
    sovcli("run", "smollm2-135m", "Hello.", *args, env={"SOVCLI_SAVE_CONVERSATIONS": "1"})
    assert json.loads(path.read_text())["messages"][0]["content"] == "Hello."


@pytest.mark.slow
def test_default_model_is_used_when_model_is_left_out(installed_smollm2) -> None:
    env = {"SOVCLI_DEFAULT_MODEL": "smollm2-135m"}
    args = ("--temperature", "0", "--max-tokens", "5", *THREADS)
    by_default = sovcli("run", "Name a colour.", *args, env=env)
    named = sovcli("run", "smollm2-135m", "Name a colour.", *args)
    assert by_default.returncode == 0, by_default.stderr
    assert by_default.stdout == named.stdout and by_default.stdout.strip()
    piped = sovcli("run", *args, stdin="Name a colour.", env=env)
    assert piped.stdout == named.stdout
    chat = sovcli("chat", *args, stdin="Hello\n", env=env)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr


@pytest.mark.slow
def test_embed_prints_normalised_vectors(installed_smollm2) -> None:
    one = sovcli("embed", "smollm2-135m", "The invoice is overdue.", *THREADS)
    assert one.returncode == 0, one.stderr
    vector = json.loads(one.stdout)
    assert len(vector) == 576 and abs(sum(x * x for x in vector) - 1) < 1e-6
    lines = sovcli(
        "embed", "smollm2-135m", "--lines", *THREADS,
        stdin="The invoice is overdue.\n\nThe cat sat on the mat.\n",
    )  # fmt: skip
    assert lines.returncode == 0, lines.stderr
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 3]  # blank lines skipped, numbers kept
    assert rows[0]["embedding"] == vector  # the same text, the same vector
    assert rows[1]["embedding"] != vector
    env = {"SOVCLI_DEFAULT_MODEL": "smollm2-135m"}
    default = sovcli("embed", "The invoice is overdue.", *THREADS, env=env)
    assert json.loads(default.stdout) == vector


# --------------------------------------------------------------------------- run -a FILE


@pytest.mark.slow
def test_attached_documents_reach_the_prompt(installed_smollm2, tmp_path: Path) -> None:
    import docx

    note = tmp_path / "invoice.txt"
    note.write_text("Invoice 4411\nTotal due: 1,250.00 EUR\nPayable to: Acme GmbH\n")
    word = docx.Document()
    word.add_paragraph("Claim 77: water damage in the kitchen, reported on 3 March.")
    word.save(tmp_path / "claim.docx")
    args = ("--temperature", "0", "--max-tokens", "12", "--stats", *THREADS)
    attached = sovcli(
        "run", "smollm2-135m", "-a", str(note), "-a", str(tmp_path / "claim.docx"),
        "What is the total due?", *args,
    )  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    # the same message typed by hand: the documents' text, marked with their names
    by_hand = (
        '<document name="invoice.txt">\nInvoice 4411\nTotal due: 1,250.00 EUR\n'
        'Payable to: Acme GmbH\n</document>\n\n<document name="claim.docx">\n'
        "Claim 77: water damage in the kitchen, reported on 3 March.\n</document>\n\n"
        "What is the total due?"
    )
    typed = sovcli("run", "smollm2-135m", *args, stdin=by_hand)
    assert typed.returncode == 0, typed.stderr
    assert attached.stdout == typed.stdout
    assert _stats(attached.stderr) == _stats(typed.stderr)


@pytest.mark.slow
def test_a_document_too_long_for_the_context_points_to_batch(
    installed_smollm2, tmp_path: Path
) -> None:
    long = tmp_path / "long.txt"
    long.write_text("The quarterly figures were discussed at length. " * 400)
    result = sovcli("run", "smollm2-135m", "-a", str(long), "Summarise.", "--ctx", "256")
    assert result.returncode == 10, result.stderr
    assert "long.txt does not fit the context" in result.stderr
    assert "sovcli batch" in result.stderr and "--ctx" in result.stderr


# --------------------------------------------------------------------------- server defaults


def test_preset_defaults_fill_only_what_a_request_leaves_out() -> None:
    """Each API's body gets the preset's values under its own names; hostile shapes are
    passed on unchanged for the parser to refuse."""
    from sovcli.server.presets import with_preset
    from sovcli.store.preset import Preset

    preset = Preset(
        system="Be a pirate.",
        stop=("</a>",),
        parameters={"temperature": 0.1, "top_k": 5, "max_tokens": 9000, "ctx": 512},
    )
    question = [{"role": "user", "content": "hi"}]
    chat = with_preset({"model": "p", "messages": question, "top_k": 50}, preset, "chat", 4096)
    assert chat["temperature"] == 0.1 and chat["top_k"] == 50  # the request's value wins
    assert chat["max_tokens"] == 4096  # capped at the server's limit
    assert chat["stop"] == ["</a>"] and "ctx" not in chat
    assert chat["messages"][0] == {"role": "system", "content": "Be a pirate."}
    own = [{"role": "developer", "content": "x"}, *question]
    assert with_preset({"messages": own}, preset, "chat", 4096)["messages"] == own
    text = with_preset({"prompt": "hi", "max_tokens": 3}, preset, "completion", 4096)
    assert text["max_tokens"] == 3 and "messages" not in text
    responses = with_preset({"input": "hi"}, preset, "responses", 100)
    assert responses["instructions"] == "Be a pirate." and responses["max_output_tokens"] == 100
    assert "top_k" not in responses and "stop" not in responses
    ollama = with_preset({"messages": question, "options": {"top_k": 2}}, preset, "ollama-chat", 64)
    assert ollama["options"] == {
        "top_k": 2,
        "temperature": 0.1,
        "num_predict": 64,
        "stop": ["</a>"],
    }
    generate = with_preset({"prompt": "hi"}, preset, "ollama-generate", 64)
    assert generate["system"] == "Be a pirate." and generate["options"]["num_predict"] == 64
    for hostile in (["not", "a", "dict"], "text", None):
        assert with_preset(hostile, preset, "chat", 64) == hostile
    odd = {"messages": "not a list", "options": "no"}
    assert with_preset(odd, preset, "ollama-chat", 64) == odd
    assert with_preset({"messages": 5}, preset, "chat", 64)["messages"] == 5
    assert with_preset({"prompt": "x"}, None, "chat", 64) == {"prompt": "x"}
