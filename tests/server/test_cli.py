"""`sovcli serve` refuses unsafe or impossible settings with a one-line error."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from sovcli.cli.main import app

runner = CliRunner()


def test_help_has_an_example():
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "sovcli serve smollm2-135m --port 8080" in result.output


def test_non_loopback_bind_needs_a_key(smollm2_gguf, monkeypatch):
    monkeypatch.delenv("SOVCLI_API_KEYS", raising=False)
    result = runner.invoke(app, ["serve", str(smollm2_gguf), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without an API key" in result.output
    assert "--no-auth" in result.output
    assert "Traceback" not in result.output


def test_short_or_malformed_keys_are_refused(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVCLI_API_KEYS", "team-a:short")
    result = runner.invoke(app, ["serve", str(smollm2_gguf)])
    assert result.exit_code == 2
    assert "shorter than 16" in result.output
    assert "short\n" not in result.output.replace("shorter", "")
    monkeypatch.delenv("SOVCLI_API_KEYS")
    missing = runner.invoke(
        app, ["serve", str(smollm2_gguf), "--api-key-file", str(tmp_path / "nope.txt")]
    )
    assert missing.exit_code == 2
    assert "cannot read the API key file" in missing.output


def test_unknown_model_and_busy_port(smollm2_gguf, tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "missing.gguf")])
    assert result.exit_code == 4
    assert result.output.startswith("error: ")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = runner.invoke(app, ["serve", str(smollm2_gguf), "--port", str(port)])
    assert busy.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in busy.output
