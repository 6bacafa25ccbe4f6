"""`--spec`, `--draft` and `--draft-max` on every front end (run, chat, serve, batch, bench),
and what each reports of speculative decoding: `run --stats`, the audit trail, batch records
and summary, `bench --json`, the server's /metrics.

Reproducible engines (SOVCLI_REPRODUCIBLE, on by default) do not draft: `auto` is off there,
and `always` or `--draft` are refused. Tests that draft set SOVCLI_REPRODUCIBLE=0 (`DRAFTING`)
and use `--spec always` where they count drafts: `auto` drafts only where this machine's
measured cost says it pays, which is not a property of the code under test.

Fast tests check the flags and refusals without loading a model (the draft model is resolved,
and refused, before anything loads); the `slow` ones run the real SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
FRONT_ENDS = ("run", "chat", "serve", "batch", "bench")
DRAFT = "tinydraft"  # the test model installed a second time, under another name
# A copy-heavy request: n-gram drafts from the prompt are right most of the time.
PARAGRAPH = (
    "The supplier invoice INV-2024-0117 was issued on 14 March 2024 by Nordlicht Logistik GmbH, "
    "Hafenstrasse 12, 20457 Hamburg, to Meridian Pharma SA for the transport of 42 pallets of "
    "temperature-controlled goods. The total amount due is EUR 18,450.00, payable within 30 "
    "days to IBAN DE44 5001 0517 5407 3249 31."
)
COPY_PROMPT = f"{PARAGRAPH}\n\nRepeat the paragraph above exactly."
LISTENING = re.compile(r"serving .* at (http://127\.0\.0\.1:\d+)/v1")
DRAFTING = {"SOVCLI_REPRODUCIBLE": "0"}  # engines that may draft (answers depend on the batch)


def sovcli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`sovcli ARGS` in a subprocess with this test's environment (plus `env`)."""
    full = {**os.environ, "SOVCLI_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=timeout,
    )


def one_error_line(stderr: str) -> str:
    """The one error line of a failed command (no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.lower().startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def front_end_args(command: str, model: str, tmp_path: Path) -> list[str]:
    """The shortest valid invocation of `command` on `model` (before any model loads)."""
    if command == "batch":
        docs = tmp_path / "docs"
        docs.mkdir(exist_ok=True)
        (docs / "a.txt").write_text(PARAGRAPH, encoding="utf-8")
        out = tmp_path / "out.jsonl"
        return ["batch", model, str(docs), "-o", str(out), "--prompt", "Repeat: {text}"]
    if command == "run":
        return ["run", model, "Hi"]
    return [command, model]


@pytest.fixture
def draft_model(installed_smollm2, smollm2_gguf: Path, smollm2_metadata: dict):
    """The test model installed again as `tinydraft:Q4_1` (same vocabulary: a valid draft)."""
    from sovcli.sources.local import import_gguf

    return import_gguf(
        smollm2_gguf, name=DRAFT, tag="Q4_1", link=True, meta=smollm2_metadata,
        license="apache-2.0",
    )  # fmt: skip


# ---------------------------------------------------------------------------- the flags
@pytest.mark.parametrize("command", FRONT_ENDS)
def test_every_front_end_has_the_flags(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for flag in ("--spec", "--draft", "--draft-max"):
        assert flag in result.output, f"{command}: no {flag}"
    lines = result.output.splitlines()
    line = next(line for line in lines if line.lstrip().startswith("--draft-max N "))
    assert "1<=x<=32" in line


@pytest.mark.parametrize("command", FRONT_ENDS)
def test_a_bogus_spec_mode_is_a_one_line_usage_error(command: str, tmp_path: Path) -> None:
    done = sovcli(*front_end_args(command, "smollm2-135m", tmp_path), "--spec", "bogus")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: Invalid value for '--spec': 'bogus' is not a speculative mode; "
                      "use auto, always or off"]  # fmt: skip


@pytest.mark.parametrize("value", ["0", "33"])
def test_draft_max_out_of_range_is_refused(value: str) -> None:
    result = CliRunner().invoke(app, ["run", "smollm2-135m", "Hi", "--draft-max", value])
    assert result.exit_code == 2 and "'--draft-max'" in result.output


@pytest.mark.parametrize(
    ("command", "mode"),
    [("run", "off"), ("chat", "auto"), ("serve", "AUTO"), ("batch", "always"), ("bench", "auto")],
)
def test_spec_modes_are_accepted(command: str, mode: str, tmp_path: Path) -> None:
    """Past the flags, the next thing checked is the model (missing here: exit 4, not 2)."""
    missing = str(tmp_path / "missing.gguf")
    done = sovcli(*front_end_args(command, missing, tmp_path), "--spec", mode, env=DRAFTING)
    assert done.returncode == 4, done.stderr
    assert one_error_line(done.stderr) == f"error: no such model file: {missing}"


@pytest.mark.parametrize("command", FRONT_ENDS)
def test_a_draft_with_speculation_off_is_refused(command: str, tmp_path: Path) -> None:
    args = front_end_args(command, "smollm2-135m", tmp_path)
    done = sovcli(*args, "--spec", "off", "--draft", DRAFT)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == (
        "error: --draft needs speculative decoding, but --spec off turns it off"
    )
    if command == "run":  # SOVCLI_SPEC=off is checked the same way
        done = sovcli(*args, "--draft", DRAFT, env={"SOVCLI_SPEC": "off", **DRAFTING})
        assert done.returncode == 2, done.stderr
        assert "SOVCLI_SPEC=off turns it off" in one_error_line(done.stderr)


@pytest.mark.parametrize("command", FRONT_ENDS)
def test_a_missing_draft_model_is_a_one_line_error(
    command: str, installed_smollm2, tmp_path: Path
) -> None:
    args = front_end_args(command, "smollm2-135m", tmp_path)
    missing = tmp_path / "nowhere" / "draft.gguf"
    done = sovcli(*args, "--draft", missing, env=DRAFTING)
    assert done.returncode == 4, done.stderr
    assert one_error_line(done.stderr) == f"error: no such model file: {missing}"
    if command == "serve":  # a name that is neither installed nor in a catalog
        done = sovcli(*args, "--draft", "no-such-draft-model", env=DRAFTING)
        assert done.returncode == 4, done.stderr
        assert one_error_line(done.stderr) == "error: unknown model 'no-such-draft-model'"
    if command == "batch":  # nothing was written for a run that could not start
        assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("command", FRONT_ENDS)
def test_a_policy_that_denies_the_draft_model_refuses(
    command: str, draft_model, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[models]\nallow = ["smollm2-135m"]\n', encoding="utf-8")
    policy.chmod(0o644)
    args = front_end_args(command, "smollm2-135m", tmp_path)
    done = sovcli(*args, "--draft", DRAFT, env={"SOVCLI_POLICY": str(policy), **DRAFTING})
    assert done.returncode == 11, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: policy {policy} denies {command} of {DRAFT}:"), line
    assert "rule models.allow" in line
    if command == "batch":
        assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("command", "extra"),
    [("run", "--spec=always"), ("chat", "--draft=x"), ("serve", "--spec=always"),
     ("batch", "--draft=x"), ("bench", "--draft=x")],
)  # fmt: skip
def test_reproducible_mode_refuses_always_and_a_draft(
    command: str, extra: str, tmp_path: Path
) -> None:
    """Refused before any model is resolved (a draft model is not pulled for nothing)."""
    done = sovcli(*front_end_args(command, "smollm2-135m", tmp_path), extra)
    assert done.returncode == 2, done.stderr
    asked = "--spec always" if extra == "--spec=always" else "--draft"
    assert one_error_line(done.stderr) == (
        f"error: {asked} cannot keep answers byte-reproducible (SOVCLI_REPRODUCIBLE is on): "
        "verified drafts go through other llama.cpp kernels than plain steps"
    )
    assert "hint: Set SOVCLI_REPRODUCIBLE=0 to use it" in done.stderr


def test_batch_refuses_a_draft_with_endpoints(installed_smollm2, tmp_path: Path) -> None:
    args = front_end_args("batch", "smollm2-135m", tmp_path)
    done = sovcli(*args, "--draft", DRAFT, "--endpoint", "http://127.0.0.1:9", env=DRAFTING)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == (
        "error: --draft runs on this machine's engine only, not with --endpoint"
    )


def test_batch_dry_run_takes_the_flags(draft_model, tmp_path: Path) -> None:
    args = front_end_args("batch", "smollm2-135m", tmp_path)
    done = sovcli(*args, "--draft", DRAFT, "--draft-max", "4", "--dry-run", env=DRAFTING)
    assert done.returncode == 0, done.stderr
    assert "todo" in done.stdout and "a.txt" in done.stdout


# ------------------------------------------------------------------------- reporting, fast
def test_stats_line_shows_drafted_and_accepted_only_when_drafted() -> None:
    from sovcli.engine.chat_session import format_stats
    from sovcli.engine.types import GenerationResult

    base = {
        "text": "x", "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20,
        "cached_prompt_tokens": 0, "time_to_first_token_s": 1.0, "prompt_eval_s": 1.0,
        "generation_s": 2.0,
    }  # fmt: skip
    plain = format_stats(GenerationResult(**base))
    assert "drafted" not in plain
    spec = format_stats(GenerationResult(**base, drafted_tokens=16, accepted_tokens=12))
    assert "| drafted 16, accepted 12 (75%) |" in spec


def test_metrics_count_drafts_of_loaded_and_unloaded_engines() -> None:
    """The counters are the engines' totals, and they never drop when a model is unloaded."""
    from sovcli.engine.types import EngineStats
    from sovcli.server.guarded import GuardedEngine
    from sovcli.server.metrics import ServerMetrics
    from sovcli.server.registry import ModelRegistry
    from sovcli.server.settings import ServedModel, ServerSettings

    class Drafting:
        info = SimpleNamespace(n_ctx=512)

        def __init__(self, drafted: int, accepted: int) -> None:
            self.totals = (drafted, accepted)
            self.closed = False

        def stats(self) -> EngineStats:
            drafted, accepted = self.totals
            return EngineStats(
                0, 0, 1, drafted_tokens_total=drafted, accepted_tokens_total=accepted
            )

        def close(self) -> None:
            self.closed = True

    models = (ServedModel("a", "/m/a.gguf"), ServedModel("b", "/m/b.gguf"))
    registry = ModelRegistry(ServerSettings(models=models), log=lambda _line: None)
    for handle, totals in zip(registry.handles, [(40, 30), (8, 2)], strict=True):
        handle.engine = GuardedEngine(Drafting(*totals), handle.id)  # type: ignore[arg-type]
        handle.state = "ready"
    assert registry.draft_totals() == (48, 32)
    assert asyncio.run(registry.unload(registry.handles[1]))
    assert registry.draft_totals() == (48, 32)
    text = ServerMetrics().render([], registry.draft_totals())
    assert "# TYPE sovcli_draft_tokens_total counter\nsovcli_draft_tokens_total 48" in text
    assert "# TYPE sovcli_draft_accepted_tokens_total counter\n" in text
    assert "\nsovcli_draft_accepted_tokens_total 32\n" in text


def test_server_settings_refuse_bad_speculation() -> None:
    from sovcli.errors import UsageError
    from sovcli.server.settings import ServedModel, ServerSettings

    named = (ServedModel("m", "/m/m.gguf"),)
    cases = [
        ({"speculative": "fast"}, "unknown speculative mode 'fast'"),
        ({"draft_max": 0}, "--draft-max must be between 1 and 32"),
        ({"draft_max": 33}, "--draft-max must be between 1 and 32"),
        ({"speculative": "off", "draft_model_path": "/m/d.gguf"}, "--spec off turns it off"),
    ]
    for fields, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            ServerSettings(models=named, **fields).validate()
    with pytest.raises(UsageError, match="the models named on the command line, and none is"):
        ServerSettings(models=(), all_installed=True, draft_model_path="/m/d.gguf").validate()
    ServerSettings(models=named, speculative="always", draft_max=32).validate()


def test_batch_audit_record_carries_the_mode_and_draft(isolated_env: Path) -> None:
    from sovcli.governance.audit import audit_batch_record

    record = {
        "path": "a.txt", "status": "ok", "model": {"ref": "m", "file_sha256": "ab" * 32},
        "speculative": "auto", "draft_model": {"ref": "d", "file_sha256": "cd" * 32},
        "reproducible": True, "tokens": {"prompt": 3, "completion": 4},
    }  # fmt: skip
    audited = audit_batch_record(record, journal=isolated_env / "out.jsonl")
    assert audited["speculative"] == "auto"
    assert audited["draft_model"] == "d" and audited["draft_model_digest"] == "sha256:" + "cd" * 32
    del record["draft_model"]
    audited = audit_batch_record(record, journal=isolated_env / "out.jsonl")
    assert "draft_model" not in audited and audited["speculative"] == "auto"


# ------------------------------------------------------------------- the real model (slow)
def audit_records(home: Path, event: str) -> list[dict]:
    """The audit trail's records of `event` in the store `home`, oldest first."""
    records = []
    for path in sorted((home / "audit").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


@pytest.mark.slow
def test_run_stats_show_drafted_and_accepted_on_a_copy(installed_smollm2, isolated_env) -> None:
    common = ["--temperature", "0", "--max-tokens", "48", "--threads", "1", "--ctx", "1024"]
    done = sovcli("run", "smollm2-135m", COPY_PROMPT, *common, "--spec", "always", "--stats",
                  env=DRAFTING)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = re.search(r"\| drafted (\d+), accepted (\d+) \((\d+)%\) \|", done.stderr)
    assert found, done.stderr
    drafted, accepted = int(found[1]), int(found[2])
    assert drafted > 0 and 0 < accepted <= drafted
    assert int(found[3]) == round(100 * accepted / drafted)
    assert "Nordlicht" in done.stdout  # it did copy the paragraph
    # In reproducible mode (the default) `auto` does not draft, and the record says so.
    plain = sovcli("run", "smollm2-135m", COPY_PROMPT, *common, "--spec", "auto", "--stats")
    assert plain.returncode == 0 and "drafted" not in plain.stderr, plain.stderr
    records = audit_records(isolated_env, "run")
    assert [(r["speculative"], r["reproducible"]) for r in records] == [
        ("always", False),
        ("off", True),
    ]
    assert not any("draft_model" in r for r in records)


@pytest.mark.slow
def test_run_with_a_draft_model_is_audited_with_it(draft_model, isolated_env) -> None:
    from sovcli.governance.identity import model_digest

    common = ["--temperature", "0", "--max-tokens", "16", "--threads", "1", "--ctx", "512"]
    done = sovcli("run", "smollm2-135m", COPY_PROMPT, *common, "--draft", DRAFT, "--stats",
                  env=DRAFTING)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Nordlicht" in done.stdout or "supplier" in done.stdout, done.stdout
    (record,) = audit_records(isolated_env, "run")
    assert record["speculative"] == "auto" and record["reproducible"] is False
    assert record["draft_model"] == f"{DRAFT}:Q4_1"
    assert record["draft_model_digest"] == model_digest(draft_model)


@pytest.mark.slow
def test_bench_json_reports_the_mode_and_the_drafts(installed_smollm2) -> None:
    args = ["--pp", "16", "--tg", "8", "--parallel", "0", "-r", "1", "--threads", "1", "--json"]
    done = sovcli("bench", "smollm2-135m", *args)  # reproducible by default: no drafting
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["speculative"] == "off" and report["draft_model"] is None
    assert report["drafted_tokens"] == 0 and report["accepted_tokens"] == 0
    done = sovcli("bench", "smollm2-135m", *args, "--spec", "always", env=DRAFTING)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["speculative"] == "always"
    assert 0 <= report["accepted_tokens"] <= report["drafted_tokens"]


@pytest.mark.slow
def test_batch_records_the_mode_and_its_summary_shows_the_drafts(
    installed_smollm2, isolated_env, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "invoice.txt").write_text(PARAGRAPH, encoding="utf-8")
    args = ["--prompt", "{text}\n\nRepeat the paragraph above exactly.", "--max-tokens", "48",
            "--ctx", "1024", "--threads", "1", "--parallel", "1", "--json"]  # fmt: skip
    out = tmp_path / "spec.jsonl"
    done = sovcli("batch", "smollm2-135m", docs, "-o", out, *args, "--spec", "always",
                  env=DRAFTING)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["speculative"] == "always" and record["reproducible"] is False
    summary = json.loads(done.stdout)
    assert summary["drafted_tokens"] > 0, done.stderr
    assert 0 < summary["accepted_tokens"] <= summary["drafted_tokens"]
    assert re.search(r"^speculative decoding: drafted \d+, accepted \d+ \(\d+%\)$",
                     done.stderr, re.M), done.stderr  # fmt: skip
    # Reproducible (the default): `auto` is off in the engine, and the record says so.
    out = tmp_path / "plain.jsonl"
    done = sovcli("batch", "smollm2-135m", docs, "-o", out, *args)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["speculative"] == "off" and record["reproducible"] is True
    assert json.loads(done.stdout)["drafted_tokens"] == 0
    assert "speculative decoding" not in done.stderr
    audited = audit_records(isolated_env, "batch_document")
    assert [a["speculative"] for a in audited] == ["always", "off"]


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # loopback only
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:  # /health answers 503 while the model loads
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.slow
def test_metrics_count_drafted_and_accepted_tokens(installed_smollm2, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "sovcli", "serve", "smollm2-135m", "--port", "0",
             "--threads", "1", "--parallel", "1", "--ctx", "1024", "--spec", "always",
             "--draft-max", "8"],
            stdout=sink, stderr=sink, cwd=ROOT,
            env={**os.environ, "SOVCLI_NO_PROGRESS": "1", **DRAFTING},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (found := LISTENING.search(log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = found[1]
        while _http("GET", url + "/health")[0] != 200:
            time.sleep(0.2)
        status, body = _http("POST", url + "/v1/chat/completions", {
            "model": "smollm2-135m", "temperature": 0, "max_tokens": 48,
            "messages": [{"role": "user", "content": COPY_PROMPT}],
        })  # fmt: skip
        assert status == 200 and "Nordlicht" in json.loads(body)["choices"][0]["message"]["content"]
        _status, metrics = _http("GET", url + "/metrics")
    finally:
        process.terminate()
        process.wait(60)
    values = dict(re.findall(r"^(sovcli_draft_\w+) (\d+)$", metrics, re.M))
    assert set(values) == {"sovcli_draft_tokens_total", "sovcli_draft_accepted_tokens_total"}
    drafted = int(values["sovcli_draft_tokens_total"])
    accepted = int(values["sovcli_draft_accepted_tokens_total"])
    assert drafted > 0 and 0 < accepted <= drafted
