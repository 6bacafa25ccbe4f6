"""`ChatSession` (the chat's state and /commands) on a fake engine: no model, no terminal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from sovcli.engine.chat_session import (
    SAMPLING_LIMITS,
    ChatSession,
    check_setting,
    parse_setting,
)
from sovcli.engine.types import EngineStats, GenerationResult, SamplingParams, TokenEvent
from sovcli.errors import UsageError


class _Stream:
    def __init__(self, text: str) -> None:
        self.text = text

    def __iter__(self):
        for word in self.text.split(" "):
            yield TokenEvent(text=word + " ")
        yield TokenEvent(text="", finish_reason="stop")

    def cancel(self) -> None:
        pass

    def result(self, timeout: float | None = None) -> GenerationResult:
        return GenerationResult(self.text + " ", "stop", 5, 3, 0, 0.01, 0.01, 0.02)


@dataclass
class _Engine:
    """The parts of `Engine` a chat uses."""

    info: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(name="Smollm2 135M 8k Lc100K Mix1 Ep2", n_ctx=512)
    )
    submitted: list = field(default_factory=list)

    def validate_sampling(self, s: SamplingParams) -> None:
        if s.temperature < 0:
            raise UsageError("temperature must be >= 0")

    def render_chat(self, messages, **_kwargs) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def tokenize(self, text: str, **_kwargs) -> list[int]:
        return list(range(len(text.split())))

    def prompt_tokens(self, request) -> list[int]:
        return self.tokenize(request.prompt)

    def submit(self, request):
        self.submitted.append(request)
        return _Stream("Hello there")

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 1, requests_total=len(self.submitted))


@pytest.fixture
def session() -> ChatSession:
    return ChatSession(_Engine(), SamplingParams(), 64, model_name="smollm2-135m")


def test_set_rejects_out_of_range_values_with_one_line(session: ChatSession) -> None:
    for line, message in [
        ("/set top_k -5", "top_k must be >= 0, not -5"),
        ("/set top_p 0", "top_p must be > 0 and <= 1, not 0"),
        ("/set top_p 1.5", "top_p must be > 0 and <= 1, not 1.5"),
        ("/set min_p 2", "min_p must be >= 0 and <= 1, not 2"),
        ("/set temperature -1", "temperature must be >= 0, not -1"),
        ("/set repeat_penalty 0", "repeat_penalty must be > 0, not 0"),
        ("/set max_tokens -1", "max_tokens must be >= 0, not -1"),
        ("/set seed -3", "seed must be >= 0, not -3"),
        ("/set presence_penalty 3", "presence_penalty must be >= -2 and <= 2, not 3"),
        ("/set top_k 2.5", "top_k takes a whole number, not '2.5'"),
        ("/set temperature nan", "temperature takes a number, not 'nan'"),
    ]:
        with pytest.raises(UsageError) as caught:
            session.command(line)
        assert caught.value.message == message
        assert "\n" not in caught.value.message
    assert session.sampling == SamplingParams()  # nothing changed
    assert session.max_tokens == 64


def test_set_accepts_values_in_range_and_set_alone_shows_them(session: ChatSession) -> None:
    assert session.command("/set top_k 0").note == "top_k = 0"
    assert session.command("/set top-p 1").note == "top_p = 1"
    assert session.command("/set max_tokens 0").note == "max_tokens = 0"
    shown = session.command("/set").output
    assert shown is not None
    values = dict(line.split(" = ") for line in shown.splitlines())
    assert set(values) == set(SAMPLING_LIMITS)
    assert values["top_k"] == "0" and values["top_p"] == "1.0"
    assert values["temperature"] == "0.8" and values["seed"] == "-"
    assert values["max_tokens"] == "-"  # 0: no limit


def test_cli_ranges_and_set_ranges_are_one_table() -> None:
    assert check_setting("top_k", 0) == 0
    assert parse_setting("min_p", "1") == 1.0
    with pytest.raises(UsageError, match="top_k must be >= 0, not -1"):
        check_setting("top_k", -1)
    assert check_setting("seed", None) is None


def test_reply_streams_through_the_callback_and_keeps_history(session: ChatSession) -> None:
    pieces: list[str] = []
    reply = session.reply("Hi", pieces.append)
    assert "".join(pieces).strip() == "Hello there"
    assert reply.note is None and reply.dropped == 0
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert "smollm2-135m" in session.command("/stats").output
    assert "Smollm2 135M" not in session.command("/stats").output


def test_commands_return_text_instead_of_printing(session: ChatSession, capsys) -> None:
    assert "/system" in session.command("/help").output
    assert session.command("/system").output == "(no system prompt)"
    assert session.command("/system Be brief.").note == "system prompt set"
    assert session.command("/system").output == "Be brief."
    assert session.command("/clear").note == "conversation cleared"
    assert session.command("/exit").quit and session.command("/bye").quit
    with pytest.raises(UsageError, match="unknown command /nope"):
        session.command("/nope")
    assert capsys.readouterr() == ("", "")


def test_save_and_load_round_trip_and_bad_settings_are_refused(
    session: ChatSession, tmp_path: Path
) -> None:
    session.reply("Hi", lambda _text: None)
    session.command("/set temperature 0.25")
    target = tmp_path / "chat.json"
    assert session.command(f"/save {target}").note.startswith("saved 2 messages")
    saved = json.loads(target.read_text())
    assert saved["settings"]["temperature"] == 0.25

    fresh = ChatSession(_Engine(), SamplingParams(), None)
    assert fresh.command(f"/load {target}").note.startswith("loaded 2 messages")
    assert fresh.sampling.temperature == 0.25 and fresh.max_tokens == 64

    saved["settings"]["top_k"] = -5
    target.write_text(json.dumps(saved))
    other = ChatSession(_Engine(), SamplingParams(), None)
    with pytest.raises(UsageError, match="top_k must be >= 0"):
        other.command(f"/load {target}")
    assert other.messages == [] and other.sampling == SamplingParams()
