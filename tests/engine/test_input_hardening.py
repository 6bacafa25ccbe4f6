"""Issue #13, findings 11 and 12: hostile input to `run` / `chat` gets a clear error, never
exit 70, and a chat never loses its conversation to a failed /save or a bad line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from sovcli.engine.chat_session import ChatSession, check_text
from sovcli.engine.types import GenerationResult, SamplingParams, TokenEvent
from sovcli.errors import StoreError, UsageError

ROOT = Path(__file__).resolve().parents[2]
LATIN1 = "Café crème, déjà vu, naïve façade.\n".encode("latin-1")
SURROGATE_ARG = b"hello \xed\xa0\x80 world"  # U+D800 encoded as UTF-8: not valid UTF-8


class _Stream:
    def __iter__(self):
        yield TokenEvent(text="Hello there")
        yield TokenEvent(text="", finish_reason="stop")

    def cancel(self) -> None:
        pass

    def result(self, timeout: float | None = None) -> GenerationResult:
        return GenerationResult("Hello there", "stop", 5, 3, 0, 0.01, 0.01, 0.02)


@dataclass
class _Engine:
    """The parts of `Engine` a chat uses; `tokenize` encodes as llama.cpp's binding does."""

    info: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(name="m", n_ctx=512))

    def validate_sampling(self, s: SamplingParams) -> None:
        pass

    def render_chat(self, messages, **_kwargs) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def tokenize(self, text: str, **_kwargs) -> list[int]:
        return list(text.encode("utf-8"))  # a surrogate raises UnicodeEncodeError, as for real

    def prompt_tokens(self, request) -> list[int]:
        return self.tokenize(request.prompt)

    def submit(self, request):
        self.tokenize(request.prompt)
        return _Stream()


@pytest.fixture
def session() -> ChatSession:
    chat = ChatSession(_Engine(), SamplingParams(), 64, model_name="m")
    chat.reply("First question", lambda _t: None)
    return chat


def _unwritable_paths(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    paths = [a_file / "x.json", a_dir, a_file / "deeper" / "x.json"]
    if Path("/proc").is_dir():
        paths.append(Path("/proc/x.json"))
    return paths


def test_save_to_an_unwritable_path_is_one_clear_error_and_keeps_the_conversation(
    session: ChatSession, tmp_path: Path
) -> None:
    before = [dict(m) for m in session.messages]
    for path in _unwritable_paths(tmp_path):
        with pytest.raises(StoreError) as caught:
            session.command(f"/save {path}")
        assert str(path) in caught.value.message
        assert "\n" not in caught.value.message and caught.value.hint
        assert session.messages == before
    assert not list(tmp_path.glob("**/.*.tmp"))  # no temp file left anywhere
    good = tmp_path / "ok.json"
    assert session.command(f"/save {good}").note.startswith("saved 2 messages")
    assert json.loads(good.read_text())["messages"] == before


def test_a_message_that_is_not_valid_text_is_refused_and_the_chat_goes_on(
    session: ChatSession,
) -> None:
    before = [dict(m) for m in session.messages]
    for bad, problem in [
        ("caf\udce9", "byte 0xE9 that is not UTF-8 at character 4"),
        ("x\ud800y", "a lone surrogate U+D800 at character 2"),
    ]:
        with pytest.raises(UsageError) as caught:
            session.reply(bad, lambda _t: None)
        assert caught.value.message == f"the message is not valid text: {problem}"
        assert "iconv" in caught.value.hint
        assert session.messages == before
    with pytest.raises(UsageError, match="system prompt is not valid text"):
        session.command("/system be \ud800 brief")
    assert session.system is None
    session.reply("Second question", lambda _t: None)
    assert len(session.messages) == 4


def test_load_refuses_a_conversation_holding_a_lone_surrogate(
    session: ChatSession, tmp_path: Path
) -> None:
    saved = tmp_path / "evil.json"
    saved.write_text(
        '{"format": "sovcli-chat/1", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    )
    before = [dict(m) for m in session.messages]
    with pytest.raises(UsageError, match=r"message 1 in .*evil.json is not valid text"):
        session.command(f"/load {saved}")
    assert session.messages == before


def test_save_never_fails_on_text_it_holds(session: ChatSession, tmp_path: Path) -> None:
    session.messages.append({"role": "assistant", "content": "odd \udce9 byte"})
    target = tmp_path / "c.json"
    session.command(f"/save {target}")
    assert json.loads(target.read_bytes())["messages"][-1]["content"] == "odd \udce9 byte"


def test_check_text_accepts_any_valid_unicode() -> None:
    text = "Grüße, 東京, Быстрая 🦊"
    assert check_text(text) == text


# ----------------------------------------------------------------------------- the CLI


def _sovcli(args: list[bytes | str], stdin: bytes | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"sovcli", *[os.fsencode(a) for a in args]],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=str(cwd),
        env=env,
    )


def _assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert err.startswith("error: ") and "\nhint: " in err
    for fragment in fragments:
        assert fragment in err


def _pdf() -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


# No model is needed: the input is refused before MODEL is resolved, so nothing is pulled.
def test_run_refuses_latin1_stdin_with_the_offset_and_an_iconv_hint(tmp_path: Path) -> None:
    proc = _sovcli(["run", "no-such-model"], LATIN1, tmp_path)
    _assert_usage_error(proc, "stdin is not UTF-8: byte 0xE9 at offset 3 (line 1)", "iconv")


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_run_refuses_a_piped_pdf_and_binary_data(tmp_path: Path) -> None:
    proc = _sovcli(["run", "no-such-model"], _pdf(), tmp_path)
    _assert_usage_error(proc, "stdin is not text (looks like a PDF)", "pdftotext")
    proc = _sovcli(["run", "no-such-model", "-"], b"text\x00\x01\x02 more", tmp_path)
    _assert_usage_error(proc, "stdin is not text (it holds NUL bytes, at byte 4)")


def test_run_refuses_a_stdin_larger_than_any_context(tmp_path: Path) -> None:
    proc = _sovcli(["run", "no-such-model"], b"word " * (7 * 1024 * 1024), tmp_path)
    _assert_usage_error(proc, "stdin holds more than 32 MB")


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_run_refuses_an_argument_that_is_not_utf8(tmp_path: Path) -> None:
    proc = _sovcli(["run", "no-such-model", SURROGATE_ARG], None, tmp_path)
    _assert_usage_error(proc, "the prompt argument is not UTF-8: byte 0xED at offset 6")
    proc = _sovcli(["run", "no-such-model", "hi", "--system", SURROGATE_ARG], None, tmp_path)
    _assert_usage_error(proc, "--system is not valid text")


@pytest.mark.slow
def test_run_reads_utf8_with_a_bom_and_utf16(smollm2_gguf: Path, tmp_path: Path) -> None:
    args = [str(smollm2_gguf), "--raw", "--temperature", "0", "--max-tokens", "4", "-t", "1"]
    for data in [
        b"\xef\xbb\xbfName a colour.",
        "Name a colour.".encode("utf-16"),  # with its byte-order mark
    ]:
        proc = _sovcli(["run", *args, "--ctx", "128"], data, tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_piped_chat_reports_a_latin1_line_and_answers_the_next(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    script = LATIN1 + b"/save /proc/x.json\n" + b"Say hi.\n/save kept.json\n"
    args = [str(smollm2_gguf), "--temperature", "0", "--max-tokens", "6", "--ctx", "512"]
    proc = _sovcli(["chat", *args, "--threads", "1"], script, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "error: the message is not valid text: byte 0xE9 that is not UTF-8" in err
    assert "error: cannot write /proc/x.json" in err
    assert "internal error" not in err
    saved = json.loads((tmp_path / "kept.json").read_text())
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == ["Say hi."]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_save_failure_on_a_terminal_keeps_the_chat(smollm2_gguf: Path, tmp_path: Path) -> None:
    import pexpect

    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    args = [str(smollm2_gguf), "--temperature", "0", "--max-tokens", "6", "--ctx", "512"]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "sovcli", "chat", *args, "--threads", "1"],
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=300,
        dimensions=(40, 200),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("Say hi.")
        child.expect_exact(">>> ")
        for target, message in [
            ("/proc/x.json", "error: cannot write /proc/x.json"),
            (f"{a_file}/x.json", "is a file, not a folder"),
            (str(tmp_path), "it is a directory"),
        ]:
            child.sendline(f"/save {target}")
            child.expect_exact(message)
            child.expect_exact(">>> ")
        child.sendline("/save kept.json")
        child.expect_exact("saved 2 messages")
        child.expect_exact(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert json.loads((tmp_path / "kept.json").read_text())["messages"][0]["content"] == "Say hi."
