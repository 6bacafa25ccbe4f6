"""CLI: `sovcli run MODEL [PROMPT]` (one completion, streamed) and `sovcli chat MODEL` (a REPL).

The chat's state and its /commands live in `sovcli.engine.chat_session`; this module reads
lines, hands them over and prints what comes back.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sovcli.cli.options import (
    CtxOption,
    MaxTokensOption,
    MinPOption,
    ModelArgument,
    RepeatPenaltyOption,
    SeedOption,
    SystemOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    VerboseOption,
)
from sovcli.errors import SovcliError, UsageError
from sovcli.settings import debug_enabled

if TYPE_CHECKING:
    from sovcli.engine.chat_session import ChatSession
    from sovcli.engine.core import Engine
    from sovcli.engine.types import GenerationResult, SamplingParams


PromptArgument = Annotated[
    str | None, typer.Argument(help='The prompt; "-" reads stdin.', show_default=False)
]
StopOption = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]
RawOption = Annotated[bool, typer.Option("--raw", help="Send the prompt as is, no chat template.")]
StatsOption = Annotated[bool, typer.Option("--stats", help="Print speed figures on stderr.")]


def _open_engine(
    model: str, ctx: int | None, threads: int | None, verbose: bool
) -> tuple[Engine, str]:
    """Resolve MODEL through the store (pulling if needed), load it; also its display name."""
    from sovcli.cli.progress import ensure_model
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    installed = ensure_model(model)
    config = EngineConfig(
        model_path=str(installed.gguf_path), n_ctx=ctx, n_threads=threads, verbose=verbose
    )
    return Engine(config), installed.name


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


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _note(message: str) -> None:
    from sovcli.cli.output import log

    log(message)


# Leading bytes of files people pipe by mistake -> what to call them.
BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (DOCX, XLSX, ODT, ...)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document (DOC, XLS, MSG)"),
    (b"{\\rtf", "an RTF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"GGUF\x03\x00\x00\x00", "a GGUF model file"),
    (b"GGUF\x02\x00\x00\x00", "a GGUF model file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "a program"),
)
TEXT_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
NOT_TEXT_HINT = (
    "Pipe plain text (UTF-8). Extract a document's text first (e.g. pdftotext FILE.pdf -), "
    "or let `sovcli batch` read .pdf .docx .html .eml files from a folder."
)


def decode_prompt(data: bytes, source: str, hint: str | None = None) -> str:
    """Bytes of a prompt (stdin or an argument) as text, or UsageError (exit 2).

    UTF-8 only (a UTF-8 or UTF-16 byte-order mark is honoured): binary input (a PDF, an
    image, any NUL byte) and bytes that are not UTF-8 (e.g. Latin-1) are refused with what
    was found and where, never guessed or replaced.
    """
    for magic, kind in BINARY_SIGNATURES:
        if data.startswith(magic):
            raise UsageError(f"{source} is not text (looks like {kind})", hint=NOT_TEXT_HINT)
    for bom, encoding in TEXT_BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"{source} starts with a {encoding.upper()} byte-order mark but is not "
                    f"{encoding.upper()} (byte {exc.start + len(bom)})",
                    hint=NOT_TEXT_HINT,
                ) from None
    if b"\x00" in data:
        raise UsageError(
            f"{source} is not text (it holds NUL bytes, at byte {data.index(0)})",
            hint=NOT_TEXT_HINT,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            f"{source} is not UTF-8: byte 0x{data[exc.start]:02X} at offset {exc.start} "
            f"(line {line})",
            hint=hint
            or "Convert it first, e.g. iconv -f LATIN1 -t UTF-8 FILE | sovcli run MODEL "
            "(use the file's real encoding: CP1252, ISO-8859-2, SHIFT_JIS, ...).",
        ) from None


ARGUMENT_HINT = (
    "The shell passed bytes that are not UTF-8: use a UTF-8 locale (e.g. LANG=C.UTF-8) or "
    "pipe the text through iconv to UTF-8."
)


def _check_options(system: str | None, stop: list[str] | None = None) -> None:
    """Refuse a --system or --stop text that is not valid Unicode before loading the model."""
    from sovcli.engine.chat_session import check_text

    if system is not None:
        check_text(system, "--system")
    for value in stop or []:
        check_text(value, "--stop")


def _argument_text(prompt: str) -> str:
    """A PROMPT argument as text: bytes that were not UTF-8 are refused like stdin's."""
    from sovcli.engine.chat_session import check_text

    try:
        raw = prompt.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return check_text(prompt, "the prompt")  # a lone surrogate: refused with its position
    return decode_prompt(raw, "the prompt argument", ARGUMENT_HINT)


MAX_STDIN_BYTES = 32 * 1024 * 1024  # far beyond any context window; bounds memory


def _read_stdin() -> bytes:
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(
            f"stdin holds more than {MAX_STDIN_BYTES // (1024 * 1024)} MB",
            hint="A prompt must fit the context window; for many documents use `sovcli batch`.",
        )
    return data


def _read_prompt(prompt: str | None) -> str | None:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return decode_prompt(_read_stdin(), "stdin")
    if prompt is None:
        return None
    return _argument_text(prompt)


def _complete(
    engine: Engine, text: str, system: str | None, raw: bool, **request: Any
) -> GenerationResult:
    """Render the prompt (chat template unless `raw`) and stream the completion to stdout."""
    from sovcli.engine.chat_session import stream_text
    from sovcli.engine.types import GenerationRequest

    if raw:
        rendered = text
    else:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        rendered = engine.render_chat(messages)
    result = stream_text(engine.submit(GenerationRequest(rendered, **request)), _write)
    if result.text and not result.text.endswith("\n"):
        _write("\n")
    return result


def run_command(
    model: ModelArgument,
    prompt: PromptArgument = None,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.8,
    top_p: TopPOption = 0.95,
    top_k: TopKOption = 40,
    min_p: MinPOption = 0.05,
    repeat_penalty: RepeatPenaltyOption = 1.0,
    seed: SeedOption = None,
    max_tokens: MaxTokensOption = 512,
    stop: StopOption = None,
    ctx: CtxOption = None,
    threads: ThreadsOption = None,
    raw: RawOption = False,
    stats: StatsOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run MODEL on one prompt and stream the reply to stdout.

    The prompt comes from PROMPT, or from stdin when it is piped or PROMPT is "-".
    With no prompt on a terminal, it opens a chat. The model is pulled first if needed.

    Examples:

      sovcli run smollm2-135m "Name three primary colours." --temperature 0

      echo "Summarise: ..." | sovcli run smollm2-135m --max-tokens 64 --stats

      sovcli run ./model.gguf "Once upon a time" --seed 42 --stop "."
    """
    _check_options(system, stop)
    text = _read_prompt(prompt)
    sampling = _sampling(temperature, top_p, top_k, min_p, seed, repeat_penalty)
    if text is None:  # a terminal and no prompt: chat
        _chat(model, ctx, threads, verbose, sampling, max_tokens, system)
        return
    if not text.strip():
        raise UsageError("the prompt is empty", hint='Give a prompt: sovcli run MODEL "..."')
    engine, _name = _open_engine(model, ctx, threads, verbose)
    try:
        result = _complete(
            engine,
            text,
            system,
            raw,
            max_tokens=max_tokens or None,
            sampling=sampling,
            stop=stop or [],
        )
    finally:
        engine.close()
    if stats:
        from sovcli.engine.chat_session import format_stats

        _note(format_stats(result))
    if result.finish_reason == "error":
        raise SovcliError(f"generation failed: {result.error}")
    if result.finish_reason == "cancelled":
        raise KeyboardInterrupt


def chat_command(
    model: ModelArgument,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.8,
    top_p: TopPOption = 0.95,
    top_k: TopKOption = 40,
    min_p: MinPOption = 0.05,
    repeat_penalty: RepeatPenaltyOption = 1.0,
    seed: SeedOption = None,
    max_tokens: MaxTokensOption = 1024,
    ctx: CtxOption = None,
    threads: ThreadsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Chat with MODEL in an interactive session (replies stream as they are written).

    Enter sends a line; start and end a multi-line message with \"\"\". Ctrl-C stops the
    current reply and keeps the conversation; Ctrl-D (or /exit) quits. Type /help for the
    slash commands (/system /clear /save /load /set /stats). Input history is kept for the
    session only; nothing is written unless you /save. With stdin not a terminal, each line
    is a message and no prompts are printed.

    Example:

      sovcli chat smollm2-135m --system "You answer in one sentence."
    """
    _check_options(system)
    sampling = _sampling(temperature, top_p, top_k, min_p, seed, repeat_penalty)
    _chat(model, ctx, threads, verbose, sampling, max_tokens, system)


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
    from sovcli.engine.chat_session import ChatSession

    engine, name = _open_engine(model, ctx, threads, verbose)
    try:
        session = ChatSession(engine, sampling, max_tokens or None, model_name=name, system=system)
        chat_loop(session, interactive=sys.stdin.isatty())
    finally:
        engine.close()


# ----------------------------------------------------------------------------- chat REPL
def _read_message(prompt: str, more: str) -> str:
    """One user message: a line, or a \"\"\" block spanning several lines."""
    line = input(prompt)
    if not line.lstrip().startswith('"""'):
        return line
    body = line.lstrip()[3:]
    if body.rstrip().endswith('"""') and body.strip():
        return body.rstrip()[:-3]
    lines = [body] if body else []
    while True:
        following = input(more)
        if following.rstrip().endswith('"""'):
            lines.append(following.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(following)


def _report(exc: SovcliError) -> None:
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")
    sys.stderr.flush()


def _handle(session: ChatSession, text: str) -> bool:
    """Send a message or run a /command, printing what comes back; False to quit."""
    if text.lstrip().startswith("/"):
        outcome = session.command(text)
        if outcome.output is not None:
            _write(outcome.output + "\n")
        if outcome.note is not None:
            _note(outcome.note)
        return not outcome.quit
    reply = session.reply(text, _write, on_note=_note)
    _write("\n")
    if reply.note:
        _note(reply.note)
    return True


def chat_loop(session: ChatSession, interactive: bool) -> None:
    """The REPL: read, reply, repeat until /exit or Ctrl-D.

    Not interactive (stdin is a pipe or a file): no greeting and no ">>> " or "... " prompts,
    so stdout holds only the replies and command output.
    """
    from sovcli.engine.chat_session import is_user_interrupt

    with contextlib.suppress(ImportError):  # line editing and in-memory history for input()
        import readline  # noqa: F401
    _tolerant_stdin()
    prompt, more = (">>> ", "... ") if interactive else ("", "")
    if interactive:
        _note(f"Chatting with {session.model_name}. /help for commands, Ctrl-D to quit.")
    while True:
        try:
            text = _read_message(prompt, more)
        except EOFError:
            if interactive:
                _write("\n")
            return
        except KeyboardInterrupt as exc:
            if not is_user_interrupt(exc):
                raise  # SIGTERM/SIGHUP: leave
            _write("\n")
            _note("(Ctrl-D or /exit quits)")
            continue
        if not text.strip():
            continue
        try:
            if not _handle(session, text):
                return
        except SovcliError as exc:
            _report(exc)
        except KeyboardInterrupt as exc:
            if not is_user_interrupt(exc):
                raise
            _write("\n")
        except Exception as exc:  # a bug must not cost the user the conversation
            if debug_enabled():
                raise
            _report(SovcliError(f"internal error: {type(exc).__name__}: {exc}", hint=BUG_HINT))


BUG_HINT = "The conversation is kept (/save it); rerun with SOVCLI_DEBUG=1 and report it."


def _tolerant_stdin() -> None:
    """Read stdin lines with bytes that are not UTF-8 kept as surrogate escapes.

    A strict decoder would end the chat on the first Latin-1 line; this way the line reaches
    `ChatSession.reply`, which refuses it with a clear error and the chat goes on.
    """
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="surrogateescape")


COMMANDS = {"run": run_command, "chat": chat_command}
