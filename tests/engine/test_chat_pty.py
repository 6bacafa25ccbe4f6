"""`sovcli chat` driven through a real pseudo-terminal, the way a person uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow  # `sovcli chat` on the real model

PROMPT = ">>> "
ROOT = Path(__file__).resolve().parents[2]


def _spawn(args: list[str], cwd, dimensions: tuple[int, int]) -> pexpect.spawn:
    """`sovcli chat ...` on a pseudo-terminal of `dimensions` (rows, columns)."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "sovcli", "chat", *args],
        cwd=str(cwd),
        encoding="utf-8",
        timeout=300,
        dimensions=dimensions,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )


@pytest.fixture
def chat(smollm2_gguf, tmp_path):
    args = [str(smollm2_gguf), "--temperature", "0", "--ctx", "1024", "--threads", "1"]
    child = _spawn([*args, "--max-tokens", "24"], tmp_path, (40, 200))
    child.expect_exact(PROMPT)
    yield child
    if child.isalive():
        child.terminate(force=True)


@pytest.mark.timeout(900)
def test_chat_session_with_ctrl_c_commands_and_ctrl_d(chat, tmp_path):
    # A reply that streams.
    chat.sendline("Say hello.")
    chat.expect_exact(PROMPT)
    first_reply = chat.before
    assert first_reply.strip()

    # A long reply stopped with Ctrl-C keeps the session.
    chat.sendline("/set max_tokens 2000")
    chat.expect_exact(PROMPT)
    chat.sendline("Write a very long story about a dragon and a knight.")
    chat.expect_exact("a knight.")  # the terminal's echo of the input line
    chat.expect(r"\w+ \w+ \w+")  # the reply is streaming
    chat.sendintr()
    chat.expect_exact("(reply stopped)")
    chat.expect_exact(PROMPT)
    chat.sendline("/set max_tokens 24")
    chat.expect_exact(PROMPT)

    # Multi-line input in a triple-quote block.
    chat.sendline('"""')
    chat.sendline("Line one.")
    chat.sendline('Line two."""')
    chat.expect_exact(PROMPT)

    chat.sendline("/stats")
    chat.expect(r"context: \d+/\d+ tokens")
    chat.expect(r"(\d+) prompt tokens reused from cache")
    assert int(chat.match.group(1)) > 0  # follow-up turns reuse the cached history
    chat.expect_exact(PROMPT)

    chat.sendline("/set temperature 0.5")
    chat.expect_exact("temperature = 0.5")
    chat.expect_exact(PROMPT)
    chat.sendline("/set nonsense 1")
    chat.expect_exact("usage: /set PARAM VALUE")
    chat.expect_exact(PROMPT)

    chat.sendline("/save conv.json")
    chat.expect_exact("saved 6 messages")
    chat.expect_exact(PROMPT)
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
    assert saved["messages"][2]["content"].startswith("Write a very long story")
    assert saved["messages"][4]["content"] == "Line one.\nLine two."

    chat.sendline("/clear")
    chat.expect_exact("conversation cleared")
    chat.expect_exact(PROMPT)
    chat.sendline("/load conv.json")
    chat.expect_exact("loaded 6 messages")
    chat.expect_exact(PROMPT)

    # Ctrl-C at the prompt does not quit; Ctrl-D does, cleanly.
    chat.sendintr()
    chat.expect_exact("Ctrl-D or /exit quits")
    chat.expect_exact(PROMPT)
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_chat_help_and_exit(chat):
    chat.sendline("/help")
    chat.expect_exact("/system")
    chat.expect_exact(PROMPT)
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


@pytest.mark.timeout(900)
def test_chat_greets_with_the_store_name_and_validates_set(installed_smollm2, tmp_path):
    child = _spawn(["smollm2-135m", "--ctx", "512", "--threads", "1"], tmp_path, (40, 80))
    try:
        child.expect_exact("Chatting with smollm2-135m.")
        child.expect_exact(PROMPT)
        assert "Smollm2 135M" not in child.before  # not the name inside the GGUF
        child.sendline("/set top_k -5")
        child.expect_exact("error: top_k must be >= 0, not -5")
        child.expect_exact(PROMPT)
        child.sendline("/set")
        child.expect_exact("top_k = 40")
        child.expect_exact("max_tokens = 1024")
        child.expect_exact(PROMPT)
        child.sendline("/set top_k 5")
        child.expect_exact("top_k = 5")
        child.expect_exact(PROMPT)
        child.sendline("/stats")
        child.expect_exact("model: smollm2-135m |")
        child.expect_exact(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


@pytest.mark.timeout(900)
def test_piped_chat_prints_no_prompts(smollm2_gguf, tmp_path):
    script = 'Say hi.\n"""\nLine one.\nLine two."""\n/system\n/set top_k -5\n'
    proc = subprocess.run(
        [sys.executable, "-m", "sovcli", "chat", str(smollm2_gguf), "--temperature", "0",
         "--max-tokens", "8", "--ctx", "512", "--threads", "1"],
        input=script, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ">>>" not in proc.stdout and "... " not in proc.stdout, proc.stdout
    assert "Chatting with" not in proc.stdout + proc.stderr  # no greeting without a terminal
    assert proc.stdout.strip().endswith("(no system prompt)")
    assert proc.stdout.strip() != "(no system prompt)"  # the two replies came first
    assert "error: top_k must be >= 0, not -5" in proc.stderr
