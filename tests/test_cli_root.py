"""The `sovcli` command as a whole: fast start-up, version, help with examples, error mapping."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sovcli import __version__
from sovcli.cli.main import app

runner = CliRunner()

HEAVY_MODULES = ("llama_cpp", "numpy", "huggingface_hub", "starlette", "uvicorn", "pypdf", "gguf")


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sovcli {__version__}"


def test_help_imports_nothing_heavy() -> None:
    """`sovcli --help` must not load llama.cpp, numpy, the hub client or the web stack."""
    code = (
        "import sys\n"
        "from sovcli.cli.main import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at start-up: {out.stdout.strip()}"


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_an_example_in_its_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    body = "\n".join(line for line in result.output.splitlines() if "Usage:" not in line)
    assert f"sovcli {command} " in body, f"no example of 'sovcli {command} ...' in its --help"


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sovcli", "no-such-command"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no-such-command" in result.stderr


def _sovcli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("typo", "suggested"),
    [("--temp", "--temperature"), ("--top_k", "--top-k"), ("--max-token", "--max-tokens")],
)
def test_unknown_option_suggests_the_closest_real_ones(typo: str, suggested: str) -> None:
    result = _sovcli("run", "smollm2-135m", "hi", typo, "0")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert typo in error and suggested in error, error
    assert "--help" not in error and "--stop" not in error, error


def test_suggestions_prefer_prefixes_then_similar_names() -> None:
    from sovcli.cli.main import suggest_options

    known = ["--help", "--stop", "--system", "--temperature", "--top-k", "--top-p", "-t"]
    assert suggest_options("--temp", known) == ["--temperature"]
    assert suggest_options("--top", known) == ["--top-k", "--top-p"]
    assert suggest_options("--sytem", known)[0] == "--system"
    assert suggest_options("--zzzz", known) == []


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_sampling_options_share_the_chat_ranges() -> None:
    result = _sovcli("run", "smollm2-135m", "hi", "--top-k", "-5")
    assert result.returncode == 2
    assert "must be >= 0, not -5" in result.stderr
    result = _sovcli("run", "smollm2-135m", "hi", "--top-p", "0")
    assert result.returncode == 2
    assert "must be > 0 and <= 1, not 0" in result.stderr


def test_ctx_has_one_minimum_everywhere() -> None:
    from sovcli.engine.types import MIN_CTX

    for command in ("run", "chat", "batch", "serve"):
        result = runner.invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        line = next(line for line in result.output.splitlines() if "--ctx" in line)
        assert f"x>={MIN_CTX}" in line, f"{command}: {line}"


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_no_command_function_is_over_60_lines() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sovcli" / "cli"
    too_long = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > 60:
                    too_long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not too_long
