"""CLI: `sovcli run MODEL [PROMPT]` (one completion, streamed) and `sovcli chat MODEL` (a REPL)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sovcli.errors import SovcliError, UsageError

if TYPE_CHECKING:
    from sovcli.engine.core import Engine
    from sovcli.engine.types import GenerationResult, SamplingParams

RUN_HELP = """Run MODEL on one prompt and stream the reply to stdout.

The prompt comes from PROMPT, or from stdin when it is piped or PROMPT is "-".
With no prompt on a terminal, it opens a chat. The model is pulled first if needed.

Examples:

  sovcli run smollm2-135m "Name three primary colours." --temperature 0

  echo "Summarise: ..." | sovcli run smollm2-135m --max-tokens 64 --stats

  sovcli run ./model.gguf "Once upon a time" --seed 42 --stop "."
"""

CHAT_HELP = """Chat with MODEL in an interactive session (replies stream as they are written).

Enter sends a line; start and end a multi-line message with \"\"\". Ctrl-C stops the
current reply and keeps the conversation; Ctrl-D (or /exit) quits. Type /help for the
slash commands (/system /clear /save /load /set /stats). Input history is kept for the
session only; nothing is written unless you /save.

Example:

  sovcli chat smollm2-135m --system "You answer in one sentence."
"""

CHAT_COMMANDS = """Commands:
  /help                 this list
  /system [TEXT]        set the system prompt (no TEXT: show it)
  /clear                forget the conversation (keeps the system prompt)
  /save FILE            save the conversation and settings as JSON
  /load FILE            load a conversation saved with /save
  /set PARAM VALUE      temperature, top_p, top_k, min_p, seed, max_tokens,
                        repeat_penalty, presence_penalty, frequency_penalty
  /stats                speed of the last reply and the conversation size
  /exit                 quit (also /bye, Ctrl-D)
Multi-line input: a line starting with \"\"\" opens a block, a line ending with \"\"\" closes it."""

_SET_PARAMS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "seed": int,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "max_tokens": int,
}


def _open_engine(model: str, ctx: int | None, threads: int | None, verbose: bool) -> Engine:
    """Resolve MODEL through the store (pulling if needed) and load it."""
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig
    from sovcli.store import ensure_model

    installed = ensure_model(model)
    if ctx is not None and ctx < 16:
        raise UsageError("--ctx must be at least 16")
    config = EngineConfig(
        model_path=str(installed.gguf_path), n_ctx=ctx, n_threads=threads, verbose=verbose
    )
    return Engine(config)


def _sampling(
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    seed: int | None,
    repeat_penalty: float,
) -> SamplingParams:
    from sovcli.engine.types import SamplingParams

    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        repeat_penalty=repeat_penalty,
    )


def format_stats(result: GenerationResult) -> str:
    """One line of speed figures for --stats and /stats."""
    evaluated = result.prompt_tokens - result.cached_prompt_tokens
    return (
        f"prompt: {result.prompt_tokens} tokens ({result.cached_prompt_tokens} cached, "
        f"{evaluated} evaluated) at {result.prompt_tokens_per_s:.1f} t/s | "
        f"generation: {result.completion_tokens} tokens at "
        f"{result.generation_tokens_per_s:.1f} t/s | "
        f"time to first token: {result.time_to_first_token_s * 1000:.0f} ms | "
        f"finish: {result.finish_reason}"
    )


def _stream_to_stdout(stream: Any) -> GenerationResult:
    """Write a stream's text to stdout as it comes; Ctrl-C cancels it and returns its result."""
    out = sys.stdout
    try:
        for event in stream:
            if event.text:
                out.write(event.text)
                out.flush()
    except KeyboardInterrupt:
        stream.cancel()
        for event in stream:  # drain to the final event (the engine ends it at the next step)
            if event.text:
                out.write(event.text)
        out.flush()
    return stream.result()


def _read_prompt(prompt: str | None) -> str | None:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    return prompt


# ----------------------------------------------------------------------------- chat REPL
class ChatSession:
    """The state of one chat: messages, system prompt, sampling settings, last result."""

    def __init__(self, engine: Engine, sampling: SamplingParams, max_tokens: int | None) -> None:
        self.engine = engine
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.system: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.last: GenerationResult | None = None

    def conversation(self) -> list[dict[str, Any]]:
        """The messages sent to the model (system prompt first)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def reply(self, text: str) -> None:
        """Send a user message and stream the assistant's reply to stdout."""
        from sovcli.console import log
        from sovcli.engine.conversation import fit_messages
        from sovcli.engine.types import GenerationRequest

        self.messages.append({"role": "user", "content": text})
        reserve = self.max_tokens or 256
        try:
            kept, prompt, dropped = fit_messages(self.engine, self.conversation(), reserve)
            stream = self.engine.submit(
                GenerationRequest(prompt, max_tokens=self.max_tokens, sampling=self.sampling)
            )
        except (SovcliError, KeyboardInterrupt):
            self.messages.pop()  # nothing was generated: forget the message
            raise
        if dropped:
            skip = 1 if self.system else 0
            self.messages = kept[skip:]
            log(f"(the oldest {dropped} message(s) were dropped to fit the context)")
        result = _stream_to_stdout(stream)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if result.finish_reason == "cancelled":
            log("(reply stopped)")
        if result.finish_reason == "error":
            log(f"error: {result.error}")
        self.last = result
        self.messages.append({"role": "assistant", "content": result.text})

    def command(self, line: str) -> bool:
        """Run a slash command; returns False when the session should end."""
        from sovcli.console import log

        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        name = name.lower()
        if name in ("/exit", "/bye", "/quit"):
            return False
        if name in ("/help", "/?"):
            print(CHAT_COMMANDS)
        elif name == "/system":
            if arg:
                self.system = arg
                log("system prompt set")
            else:
                print(self.system or "(no system prompt)")
        elif name == "/clear":
            self.messages = []
            self.last = None
            log("conversation cleared")
        elif name == "/save":
            self._save(arg)
        elif name == "/load":
            self._load(arg)
        elif name == "/set":
            self._set(arg)
        elif name == "/stats":
            self._stats()
        else:
            log(f"unknown command {name}; /help lists them")
        return True

    def _save(self, arg: str) -> None:
        from sovcli.console import log
        from sovcli.fsutil import atomic_write_text

        if not arg:
            raise UsageError("/save needs a file name", hint="e.g. /save chat.json")
        doc = {
            "format": "sovcli-chat/1",
            "model": self.engine.info.name,
            "system": self.system,
            "messages": self.messages,
            "settings": {
                "max_tokens": self.max_tokens,
                **{k: getattr(self.sampling, k) for k in _SET_PARAMS if k != "max_tokens"},
            },
        }
        path = Path(arg).expanduser()
        atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        log(f"saved {len(self.messages)} messages to {path}")

    def _load(self, arg: str) -> None:
        from sovcli.console import log

        if not arg:
            raise UsageError("/load needs a file name", hint="e.g. /load chat.json")
        path = Path(arg).expanduser()
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
        self.messages = [
            {"role": m["role"], "content": str(m.get("content") or "")} for m in messages
        ]
        system = doc.get("system")
        self.system = system if isinstance(system, str) and system else None
        for key, value in (doc.get("settings") or {}).items():
            if key in _SET_PARAMS and value is not None:
                self._apply(key, str(value))
        log(f"loaded {len(self.messages)} messages from {path}")

    def _apply(self, key: str, raw: str) -> None:
        kind = _SET_PARAMS[key]
        try:
            value: Any = kind(raw)
        except ValueError:
            raise UsageError(f"{key} takes a {kind.__name__}, not {raw!r}") from None
        if key == "max_tokens":
            self.max_tokens = value if value > 0 else None
            return
        candidate = replace(self.sampling, **{key: value})
        self.engine.validate_sampling(candidate)  # same validation as a request
        self.sampling = candidate

    def _set(self, arg: str) -> None:
        from sovcli.console import log

        key, _, raw = arg.partition(" ")
        key = key.strip().lower().replace("-", "_")
        raw = raw.strip()
        if key not in _SET_PARAMS or not raw:
            raise UsageError(
                "usage: /set PARAM VALUE", hint="PARAM is one of " + ", ".join(_SET_PARAMS)
            )
        self._apply(key, raw)
        log(f"{key} = {raw}")

    def _stats(self) -> None:
        stats = self.engine.stats()
        tokens = len(
            self.engine.tokenize(self.engine.render_chat(self.conversation()))
            if self.conversation()
            else []
        )
        print(f"model: {self.engine.info.name} | context: {tokens}/{self.engine.info.n_ctx} tokens")
        if self.last is not None:
            print("last reply: " + format_stats(self.last))
        print(
            f"session: {stats.requests_total} replies, {stats.generated_tokens_total} tokens "
            f"generated, {stats.cached_prompt_tokens_total} prompt tokens reused from cache"
        )


def _read_message(prompt: str) -> str:
    """One user message: a line, or a \"\"\" block spanning several lines."""
    line = input(prompt)
    if not line.lstrip().startswith('"""'):
        return line
    body = line.lstrip()[3:]
    if body.rstrip().endswith('"""') and body.strip():
        return body.rstrip()[:-3]
    lines = [body] if body else []
    while True:
        more = input("... ")
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(more)


def chat_loop(session: ChatSession) -> None:
    """The REPL: read, reply, repeat until /exit or Ctrl-D."""
    from sovcli.console import log

    with contextlib.suppress(ImportError):  # line editing and in-memory history for input()
        import readline  # noqa: F401
    interactive = sys.stdin.isatty()
    prompt = ">>> " if interactive else ""
    if interactive:
        log(f"Chatting with {session.engine.info.name}. /help for commands, Ctrl-D to quit.")
    while True:
        try:
            text = _read_message(prompt)
        except EOFError:
            if interactive:
                sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            log("(Ctrl-D or /exit quits)")
            continue
        if not text.strip():
            continue
        try:
            if text.lstrip().startswith("/"):
                if not session.command(text):
                    return
            else:
                session.reply(text)
        except SovcliError as exc:
            sys.stderr.write(f"error: {exc.message}\n")
            if exc.hint:
                sys.stderr.write(f"hint: {exc.hint}\n")
        except KeyboardInterrupt:
            sys.stdout.write("\n")


def _chat(
    model: str,
    ctx: int | None,
    threads: int | None,
    verbose: bool,
    sampling: SamplingParams,
    max_tokens: int,
    system: str | None,
) -> None:
    """Load MODEL and run the chat REPL until the user leaves."""
    engine = _open_engine(model, ctx, threads, verbose)
    try:
        session = ChatSession(engine, sampling, max_tokens or None)
        session.system = system
        chat_loop(session)
    finally:
        engine.close()


def register(app: typer.Typer) -> None:
    """Add `run` and `chat` to the app."""

    @app.command("run", help=RUN_HELP)
    def run_command(
        model: str = typer.Argument(..., help="Alias, name:tag, hf:org/repo or a .gguf path."),
        prompt: str | None = typer.Argument(None, help='The prompt; "-" reads stdin.'),
        system: str | None = typer.Option(None, "--system", help="System prompt."),
        temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy, reproducible."),
        top_p: float = typer.Option(0.95, "--top-p"),
        top_k: int = typer.Option(40, "--top-k"),
        min_p: float = typer.Option(0.05, "--min-p"),
        repeat_penalty: float = typer.Option(1.0, "--repeat-penalty"),
        seed: int | None = typer.Option(None, "--seed", help="Fixed seed: reproducible."),
        max_tokens: int = typer.Option(512, "--max-tokens", help="0 = until the context is full."),
        stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
        ctx: int | None = typer.Option(None, "--ctx", help="Context size in tokens."),
        threads: int | None = typer.Option(None, "--threads", help="Default: physical cores."),
        raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, no chat template."),
        stats: bool = typer.Option(False, "--stats", help="Print speed figures on stderr."),
        verbose: bool = typer.Option(False, "--verbose", help="Show llama.cpp's log."),
    ) -> None:
        from sovcli.engine.types import GenerationRequest

        text = _read_prompt(prompt)
        sampling = _sampling(temperature, top_p, top_k, min_p, seed, repeat_penalty)
        if max_tokens < 0:
            raise UsageError("--max-tokens must be >= 0")
        if text is None:  # a terminal and no prompt: chat
            _chat(model, ctx, threads, verbose, sampling, max_tokens, system)
            return
        if not text.strip():
            raise UsageError("the prompt is empty", hint='Give a prompt: sovcli run MODEL "..."')
        engine = _open_engine(model, ctx, threads, verbose)
        try:
            if raw:
                rendered = text
            else:
                messages = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": text})
                rendered = engine.render_chat(messages)
            stream = engine.submit(
                GenerationRequest(
                    rendered, max_tokens=max_tokens or None, sampling=sampling, stop=list(stop)
                )
            )
            result = _stream_to_stdout(stream)
            if result.text and not result.text.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
            if stats:
                sys.stderr.write(format_stats(result) + "\n")
            if result.finish_reason == "error":
                raise SovcliError(f"generation failed: {result.error}")
            if result.finish_reason == "cancelled":
                raise KeyboardInterrupt
        finally:
            engine.close()

    @app.command("chat", help=CHAT_HELP)
    def chat_command(
        model: str = typer.Argument(..., help="Alias, name:tag, hf:org/repo or a .gguf path."),
        system: str | None = typer.Option(None, "--system", help="System prompt."),
        temperature: float = typer.Option(0.8, "--temperature"),
        top_p: float = typer.Option(0.95, "--top-p"),
        top_k: int = typer.Option(40, "--top-k"),
        min_p: float = typer.Option(0.05, "--min-p"),
        repeat_penalty: float = typer.Option(1.0, "--repeat-penalty"),
        seed: int | None = typer.Option(None, "--seed"),
        max_tokens: int = typer.Option(1024, "--max-tokens", help="Per reply; 0 = no limit."),
        ctx: int | None = typer.Option(None, "--ctx", help="Context size in tokens."),
        threads: int | None = typer.Option(None, "--threads", help="Default: physical cores."),
        verbose: bool = typer.Option(False, "--verbose", help="Show llama.cpp's log."),
    ) -> None:
        sampling = _sampling(temperature, top_p, top_k, min_p, seed, repeat_penalty)
        if max_tokens < 0:
            raise UsageError("--max-tokens must be >= 0")
        _chat(model, ctx, threads, verbose, sampling, max_tokens, system)
