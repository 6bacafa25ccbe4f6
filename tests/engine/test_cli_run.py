"""`sovcli run`, `bench` and `doctor` through the CLI with the real model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_run_prompt_argument_is_deterministic_at_temperature_zero(installed_smollm2):
    args = [
        "run",
        "smollm2-135m",
        "What is 2+2?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--threads",
        "1",
    ]
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip()
    assert first.stdout == second.stdout


@pytest.mark.slow
def test_run_reads_stdin_and_prints_stats(smollm2_gguf):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovcli",
            "run",
            str(smollm2_gguf),
            "-",
            "--temperature",
            "0",
            "--threads",
            "1",
            "--max-tokens",
            "8",
            "--stats",
            "--ctx",
            "512",
        ],
        input="Name a colour.",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "prompt:" in proc.stderr and "t/s" in proc.stderr
    assert "time to first token" in proc.stderr
    assert "llama_" not in proc.stderr  # llama.cpp's own log stays quiet


@pytest.mark.slow
def test_run_piped_stdin_without_dash_and_stop(smollm2_gguf):
    result = runner.invoke(
        app,
        [
            "run",
            str(smollm2_gguf),
            "--raw",
            "--temperature",
            "0",
            "--threads",
            "1",
            "--max-tokens",
            "30",
            "--stop",
            ",",
            "--ctx",
            "512",
        ],
        input="Monday, Tuesday, Wednesday",
    )
    assert result.exit_code == 0, result.output
    assert "," not in result.stdout


@pytest.mark.slow
def test_run_errors_are_one_line(smollm2_gguf, tmp_path):
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.gguf"), "hi"])
    assert missing.exit_code != 0
    assert "Traceback" not in missing.output
    too_long = runner.invoke(
        app, ["run", str(smollm2_gguf), "word " * 400, "--ctx", "256", "--raw"]
    )
    assert too_long.exit_code == 10
    assert "context" in too_long.output and "hint:" in too_long.output
    bad = runner.invoke(app, ["run", str(smollm2_gguf), "hi", "--temperature", "-1"])
    assert bad.exit_code == 2


def test_doctor_json_reports_machine_and_store():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cpu"]["physical_cores"] >= 1
    assert isinstance(report["cpu"]["features"], list)
    assert report["llama_cpp"]["available"] is True
    assert "system_info" in report["llama_cpp"]
    assert report["memory"]["total_bytes"] > 0
    assert report["store"]["free_bytes"] > 0


@pytest.mark.slow
def test_bench_json_small(smollm2_gguf):
    result = runner.invoke(
        app,
        [
            "bench",
            "--threads",
            "1",
            str(smollm2_gguf),
            "--pp",
            "16",
            "--tg",
            "4",
            "--parallel",
            "1,2",
            "--parallel-tokens",
            "4",
            "-r",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pp_tokens_per_s"] > 0 and report["tg_tokens_per_s"] > 0
    assert set(report["parallel"]) == {"1", "2"}
    assert report["peak_rss_bytes"] > 50 * 2**20
