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
