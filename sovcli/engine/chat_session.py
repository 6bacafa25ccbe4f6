"""One chat with a loaded model: the conversation, the system prompt, sampling, /commands.

Front ends (the `sovcli chat` REPL) read a message, hand it to `ChatSession.reply` or
`ChatSession.command`, and show what comes back: this module never prints. Replies stream
through an `on_text` callback; command output comes back as a `CommandResult`.

`SAMPLING_LIMITS` (from `sovcli.store.preset`, where created models' presets are checked
too) is the one table of ranges for the sampling settings: `/set` checks a
value with `parse_setting` and the CLI's --temperature/--top-k/... options with
`check_setting`, so both accept and refuse the same values with the same message.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sovcli.engine.types import GenerationResult, SamplingParams
from sovcli.errors import SovcliError, UsageError
from sovcli.store.preset import PARAMETER_LIMITS, SAMPLING_LIMITS, number_text

if TYPE_CHECKING:
    from sovcli.engine.core import Engine
    from sovcli.store.preset import Preset

CHAT_COMMANDS = """Commands:
  /help                 this list
  /system [TEXT]        set the system prompt (no TEXT: show it)
  /clear                forget the conversation (keeps the system prompt)
  /save FILE            save the conversation and settings as JSON
  /load FILE            load a conversation saved with /save
  /set [PARAM VALUE]    set temperature, top_p, top_k, min_p, seed, max_tokens,
                        repeat_penalty, presence_penalty or frequency_penalty
                        (no PARAM: show the current values)
  /stats                speed of the last reply and the conversation size
  /exit                 quit (also /bye, Ctrl-D)
Multi-line input: a line starting with \"\"\" opens a block, a line ending with \"\"\" closes it."""

SAVE_FORMAT = "sovcli-chat/1"


_number = number_text


def range_problem(name: str, value: Any) -> str | None:
    """Why `value` is out of the range of setting `name` ("must be >= 0, not -5"), or None."""
    limit = SAMPLING_LIMITS[name]
    if value is None or limit.contains(value):
        return None
    return f"must be {limit.describe()}, not {_number(value)}"


def check_setting(name: str, value: Any) -> Any:
    """`value` if it is in the range of setting `name`, else UsageError (one line)."""
    problem = range_problem(name, value)
    if problem:
        raise UsageError(f"{name} {problem}")
    return value


def parse_setting(name: str, raw: str) -> Any:
    """The text `raw` as a value of setting `name`, checked against its range."""
    limit = SAMPLING_LIMITS[name]
    try:
        value = limit.kind(raw)
    except ValueError:
        raise UsageError(f"{name} takes {_kind_name(limit.kind)}, not {raw!r}") from None
    if value != value:  # NaN
        raise UsageError(f"{name} takes a number, not {raw!r}")
    return check_setting(name, value)


RUN_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": None,
    "max_tokens": 512,
    "ctx": None,
}
"""What `run` uses for a setting no flag, `-o` or preset gives (`chat`: max_tokens 1024)."""


def parse_options(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`-o KEY VALUE` pairs as settings, each checked against its range (UsageError).

    KEY is a sampling setting (`/set`'s), or `ctx`; `-` and `_` are the same in it.
    """
    values: dict[str, Any] = {}
    for key, raw in pairs:
        name = key.strip().lower().replace("-", "_")
        limit = PARAMETER_LIMITS.get(name)
        if limit is None:
            close = difflib.get_close_matches(name, list(PARAMETER_LIMITS), n=1)
            raise UsageError(
                f"-o {key}: unknown setting" + (f" (did you mean {close[0]}?)" if close else ""),
                hint="-o takes " + ", ".join(PARAMETER_LIMITS) + ", e.g. -o temperature 0.2",
            )
        try:
            value = limit.kind(raw.strip())
        except ValueError:
            raise UsageError(f"-o {name} takes {_kind_name(limit.kind)}, not {raw!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"-o {name} takes a finite number, not {raw!r}")
        if not limit.contains(value):
            raise UsageError(f"-o {name} must be {limit.describe()}, not {_number(value)}")
        values[name] = value
    return values


@dataclass(frozen=True)
class RunSettings:
    """What a run or a chat uses, once flags, `-o`, a created model's preset and the
    defaults are combined (in that order of precedence)."""

    values: dict[str, Any]  # every key of RUN_DEFAULTS
    system: str | None = None
    stop: tuple[str, ...] = ()
    template: str | None = None  # a chat template replacing the GGUF's

    def sampling(self, grammar: str | None = None) -> SamplingParams:
        """The sampling parameters (with `grammar` constraining the output, if any)."""
        keys = [k for k in SAMPLING_LIMITS if k != "max_tokens"]
        return SamplingParams(**{k: self.values[k] for k in keys}, grammar=grammar)

    @property
    def max_tokens(self) -> int | None:
        """Tokens per reply (None: until the context is full)."""
        return self.values["max_tokens"] or None

    @property
    def ctx(self) -> int | None:
        """Context per sequence (None: the engine's default)."""
        return self.values["ctx"]


def check_given_once(flags: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The flags given (not None); UsageError for a setting also given with `-o`."""
    given = {k: v for k, v in flags.items() if v is not None}
    twice = sorted(set(given) & set(options))
    if twice:
        flag = "--" + twice[0].replace("_", "-")
        raise UsageError(f"{twice[0]} is given twice ({flag} and -o {twice[0]})")
    return given


def combine_settings(
    flags: dict[str, Any],
    options: dict[str, Any],
    preset: Preset | None,
    *,
    system: str | None = None,
    stop: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> RunSettings:
    """Flags over `-o` options over the preset over `defaults` (RUN_DEFAULTS).

    `flags` holds only the options given on the command line; a setting given both as a
    flag and with `-o` is refused, as ambiguous.
    """
    given = check_given_once(flags, options)
    values = {**(defaults or RUN_DEFAULTS)}
    if preset is not None:
        values.update(preset.parameters)
    values.update(options)
    values.update(given)
    return RunSettings(
        values=values,
        system=system if system is not None else (preset.system if preset else None),
        stop=tuple(stop) if stop else (preset.stop if preset else ()),
        template=preset.template if preset else None,
    )


INVALID_TEXT_HINT = (
    "Send UTF-8 text; convert a file first, e.g. iconv -f LATIN1 -t UTF-8 FILE (or the file's "
    "real encoding)."
)


def check_text(text: str, what: str = "the message") -> str:
    """`text` if it is valid Unicode the model can take, else UsageError naming the problem.

    Bytes that were not UTF-8 reach Python as surrogate escapes (U+DC80..U+DCFF, e.g. from a
    command-line argument) and a lone surrogate can come from a JSON `\\ud800` escape: the
    tokenizer cannot encode either, so they are refused here with the position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        if 0xDC80 <= ord(char) <= 0xDCFF:
            problem = f"byte 0x{ord(char) - 0xDC00:02X} that is not UTF-8"
        else:
            problem = f"a lone surrogate U+{ord(char):04X}"
        raise UsageError(
            f"{what} is not valid text: {problem} at character {exc.start + 1}",
            hint=INVALID_TEXT_HINT,
        ) from None
    return text


def _kind_name(kind: type) -> str:
    return "a whole number" if kind is int else "a number"


def format_stats(result: GenerationResult) -> str:
    """One line of speed figures for `run --stats` and `/stats`."""
    evaluated = result.prompt_tokens - result.cached_prompt_tokens
    parts = [
        f"prompt: {result.prompt_tokens} tokens ({result.cached_prompt_tokens} cached, "
        f"{evaluated} evaluated) at {result.prompt_tokens_per_s:.1f} t/s",
        f"generation: {result.completion_tokens} tokens at "
        f"{result.generation_tokens_per_s:.1f} t/s",
    ]
    if result.drafted_tokens > 0:  # speculative decoding proposed tokens
        share = 100 * result.accepted_tokens / result.drafted_tokens
        parts.append(
            f"drafted {result.drafted_tokens}, accepted {result.accepted_tokens} ({share:.0f}%)"
        )
    parts.append(f"time to first token: {result.time_to_first_token_s * 1000:.0f} ms")
    parts.append(f"finish: {result.finish_reason}")
    return " | ".join(parts)


def is_user_interrupt(exc: BaseException) -> bool:
    """True for Ctrl-C itself; False for a KeyboardInterrupt subclass (the CLI raises one on
    SIGTERM/SIGHUP), which must end the program, not just the current reply."""
    return type(exc) is KeyboardInterrupt


def stream_text(stream: Any, on_text: Callable[[str], None]) -> GenerationResult:
    """Hand a stream's text to `on_text` as it comes; Ctrl-C cancels it, then drains it.

    Returns the stream's result (finish_reason "cancelled" after a Ctrl-C). A termination
    signal (a KeyboardInterrupt subclass) cancels the stream and is re-raised.
    """
    try:
        for event in stream:
            if event.text:
                on_text(event.text)
    except KeyboardInterrupt as exc:
        stream.cancel()
        if not is_user_interrupt(exc):
            raise
        for event in stream:  # drain to the final event (the engine ends it at the next step)
            if event.text:
                on_text(event.text)
    return stream.result()


@dataclass(frozen=True)
class CommandResult:
    """What a slash command produced: `output` for stdout, `note` for stderr."""

    output: str | None = None
    note: str | None = None
    quit: bool = False


@dataclass(frozen=True)
class Reply:
    """One assistant reply: the engine's result and how many old messages were dropped."""

    result: GenerationResult
    dropped: int = 0

    @property
    def note(self) -> str | None:
        """A remark for stderr when the reply did not end normally."""
        if self.result.finish_reason == "cancelled":
            return "(reply stopped)"
        if self.result.finish_reason == "error":
            return f"error: {self.result.error}"
        return None


class ChatSession:
    """The state of one chat: messages, system prompt, sampling settings, last result.

    `model_name` is how the model is called to the user (the name they typed or the store
    name), not the name inside the GGUF.
    """

    def __init__(
        self,
        engine: Engine,
        sampling: SamplingParams,
        max_tokens: int | None,
        *,
        model_name: str | None = None,
        system: str | None = None,
        stop: Iterable[str] = (),
    ) -> None:
        self.engine = engine
        self.stop = list(stop)
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.model_name = model_name or engine.info.name
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.last: GenerationResult | None = None
        # Called with each reply's result and the conversation it answered (the audit record).
        self.on_answer: Callable[[GenerationResult, list[dict[str, Any]]], None] | None = None

    def conversation(self) -> list[dict[str, Any]]:
        """The messages sent to the model (system prompt first)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def reply(
        self,
        text: str,
        on_text: Callable[[str], None],
        on_note: Callable[[str], None] | None = None,
    ) -> Reply:
        """Send a user message; the reply's text goes to `on_text` as it streams.

        When old messages must go to fit the context, `on_note` hears it before the reply.
        """
        from sovcli.engine.conversation import fit_messages
        from sovcli.engine.types import GenerationRequest

        check_text(text)
        self.messages.append({"role": "user", "content": text})
        reserve = self.max_tokens or 256
        try:
            kept, prompt, dropped = fit_messages(self.engine, self.conversation(), reserve)
            stream = self.engine.submit(
                GenerationRequest(
                    prompt, max_tokens=self.max_tokens, sampling=self.sampling, stop=self.stop
                )
            )
        except (SovcliError, KeyboardInterrupt):
            self.messages.pop()  # nothing was generated: forget the message
            raise
        if dropped:
            self.messages = kept[1 if self.system else 0 :]
            if on_note is not None:
                on_note(f"(the oldest {dropped} message(s) were dropped to fit the context)")
        result = stream_text(stream, on_text)
        self.last = result
        if self.on_answer is not None:
            self.on_answer(result, self.conversation())
        self.messages.append({"role": "assistant", "content": result.text})
        return Reply(result, dropped)

    # --- slash commands -----------------------------------------------------------------

    def command(self, line: str) -> CommandResult:
        """Run a slash command (UsageError for a bad one)."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        name = name.lower()
        if name in ("/exit", "/bye", "/quit"):
            return CommandResult(quit=True)
        handler = self._handlers().get(name)
        if handler is None:
            raise UsageError(f"unknown command {name}", hint="/help lists the commands.")
        return handler(arg)

    def _handlers(self) -> dict[str, Callable[[str], CommandResult]]:
        return {
            "/help": lambda _arg: CommandResult(output=CHAT_COMMANDS),
            "/?": lambda _arg: CommandResult(output=CHAT_COMMANDS),
            "/system": self._system,
            "/clear": self._clear,
            "/save": self._save,
            "/load": self._load,
            "/set": self._set,
            "/stats": lambda _arg: CommandResult(output=self.stats()),
        }

    def _system(self, arg: str) -> CommandResult:
        if not arg:
            return CommandResult(output=self.system or "(no system prompt)")
        self.system = check_text(arg, "the system prompt")
        return CommandResult(note="system prompt set")

    def _clear(self, _arg: str) -> CommandResult:
        self.messages = []
        self.last = None
        return CommandResult(note="conversation cleared")

    def settings(self) -> dict[str, Any]:
        """The current value of every setting `/set` changes."""
        values = {k: getattr(self.sampling, k) for k in SAMPLING_LIMITS if k != "max_tokens"}
        return {**values, "max_tokens": self.max_tokens}

    def _save(self, arg: str) -> CommandResult:
        from sovcli.fsutil import atomic_write_bytes

        if not arg:
            raise UsageError("/save needs a file name", hint="e.g. /save chat.json")
        doc = {
            "format": SAVE_FORMAT,
            "model": self.engine.info.name,
            "system": self.system,
            "messages": self.messages,
            "settings": self.settings(),
        }
        path = Path(arg).expanduser()
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        # backslashreplace writes a stray surrogate as a JSON \\udXXX escape, never fails.
        # A path that cannot be written is a StoreError: the chat reports it and goes on.
        atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))
        return CommandResult(note=f"saved {len(self.messages)} messages to {path}")

    def _load(self, arg: str) -> CommandResult:
        if not arg:
            raise UsageError("/load needs a file name", hint="e.g. /load chat.json")
        path = Path(arg).expanduser()
        doc = _read_saved(path)
        messages = doc["messages"]
        system = doc.get("system")
        settings = {
            k: str(v)
            for k, v in (doc.get("settings") or {}).items()
            if k in SAMPLING_LIMITS and v is not None
        }
        loaded = [{"role": m["role"], "content": str(m.get("content") or "")} for m in messages]
        for i, message in enumerate(loaded, 1):
            check_text(message["content"], f"message {i} in {path}")
            check_text(message["role"], f"message {i} in {path}")
        if isinstance(system, str):
            check_text(system, f"the system prompt in {path}")
        self._apply_all(settings.items())  # all checked before anything changes
        self.messages = loaded
        self.system = system if isinstance(system, str) and system else None
        return CommandResult(note=f"loaded {len(self.messages)} messages from {path}")

    def _set(self, arg: str) -> CommandResult:
        if not arg:
            lines = [f"{k} = {_show(v)}" for k, v in self.settings().items()]
            return CommandResult(output="\n".join(lines))
        key, _, raw = arg.partition(" ")
        key = key.strip().lower().replace("-", "_")
        raw = raw.strip()
        if key not in SAMPLING_LIMITS or not raw:
            raise UsageError(
                "usage: /set PARAM VALUE", hint="PARAM is one of " + ", ".join(SAMPLING_LIMITS)
            )
        self._apply_all([(key, raw)])
        return CommandResult(note=f"{key} = {raw}")

    def _apply_all(self, pairs: Iterable[tuple[str, str]]) -> None:
        values = {key: parse_setting(key, raw) for key, raw in pairs}
        max_tokens = values.pop("max_tokens", self.max_tokens)
        candidate = replace(self.sampling, **values)
        self.engine.validate_sampling(candidate)  # same validation as a request
        self.sampling = candidate
        self.max_tokens = max_tokens or None

    def stats(self) -> str:
        """`/stats`: the context in use, the last reply's speed, the session's totals."""
        stats = self.engine.stats()
        conversation = self.conversation()
        tokens = (
            len(self.engine.tokenize(self.engine.render_chat(conversation))) if conversation else 0
        )
        lines = [f"model: {self.model_name} | context: {tokens}/{self.engine.info.n_ctx} tokens"]
        if self.last is not None:
            lines.append("last reply: " + format_stats(self.last))
        lines.append(
            f"session: {stats.requests_total} replies, {stats.generated_tokens_total} tokens "
            f"generated, {stats.cached_prompt_tokens_total} prompt tokens reused from cache"
        )
        return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _read_saved(path: Path) -> dict[str, Any]:
    """A conversation file written by /save (UsageError when it is not one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise UsageError(f"{path} is not a conversation saved with /save")
    return doc
