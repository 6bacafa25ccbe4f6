"""`sovcli chat` driven through a real pseudo-terminal, the way a person uses it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

PROMPT = ">>> "
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chat(smollm2_gguf, tmp_path):
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "sovcli",
            "chat",
            str(smollm2_gguf),
            "--temperature",
            "0",
            "--ctx",
            "1024",
            "--threads",
            "1",
            "--max-tokens",
            "24",
        ],
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=300,
        dimensions=(40, 200),
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
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
