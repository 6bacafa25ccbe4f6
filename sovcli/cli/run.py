"""CLI: `sovcli run MODEL [PROMPT]` (one completion, streamed) and `sovcli chat MODEL` (a REPL).

The chat's state and its /commands live in `sovcli.engine.chat_session`; this module reads
lines, hands them over and prints what comes back. Settings come from the flags, `-o KEY
VALUE`, a created model's preset and the defaults, in that order
(`chat_session.combine_settings`); `run` also takes documents (`-a`), an output format
(`--format json`, `--schema`; see `cli.inputs`) and continues a conversation kept with
`--save` (`-c`; `engine.conversation`).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sovcli.cli.inputs import (
    check_json_reply,
    output_grammar,
    pick_model,
    read_attachment,
    with_documents,
)
from sovcli.cli.options import (
    CtxOption,
    DraftMaxOption,
    DraftOption,
    MaxTokensOption,
    MinPOption,
    OptionalModelArgument,
    RepeatPenaltyOption,
    SeedOption,
    SettingPairsOption,
    SpecOption,
    SystemOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    VerboseOption,
)
from sovcli.cli.speculation import SpecFlags
from sovcli.errors import SovcliError, UsageError
from sovcli.settings import debug_enabled, flag

if TYPE_CHECKING:
    from sovcli.cli.speculation import Speculation
    from sovcli.engine.chat_session import ChatSession, RunSettings
    from sovcli.engine.conversation import SavedConversation
    from sovcli.engine.core import Engine
    from sovcli.engine.types import GenerationResult
    from sovcli.store.model import InstalledModel
    from sovcli.store.preset import Preset


PromptArgument = Annotated[
    str | None, typer.Argument(help='The prompt; "-" reads stdin.', show_default=False)
]
StopOption = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]
RawOption = Annotated[bool, typer.Option("--raw", help="Send the prompt as is, no chat template.")]
StatsOption = Annotated[bool, typer.Option("--stats", help="Print speed figures on stderr.")]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", help='"json": the reply is one JSON object (a grammar ensures it).'),
]
SchemaOption = Annotated[
    Path | None,
    typer.Option("--schema", help="A JSON schema file: the reply is JSON valid against it."),
]
AttachOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--attach",
        "-a",
        help="A document (.pdf .docx .txt .html .eml ...) whose text goes in the prompt "
        "(repeatable).",
    ),
]
ContinueOption = Annotated[
    bool,
    typer.Option("--continue", "-c", help="Continue the last conversation kept with --save."),
]
SaveOption = Annotated[
    bool,
    typer.Option(
        "--save", help="Keep this conversation for `run -c` (yours only, under SOVCLI_HOME)."
    ),
]


@dataclass
class RunJob:
    """What `sovcli run` was asked to do, as typed (checked before any model loads)."""

    model: str | None
    prompt: str | None
    system: str | None
    stop: list[str] | None
    flags: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None
    schema: dict[str, Any] | None = None
    attach: list[Path] = field(default_factory=list)
    continuing: bool = False
    save: bool = False
    raw: bool = False
    stats: bool = False
    threads: int | None = None
    verbose: bool = False
    spec: SpecFlags = field(default_factory=SpecFlags)


def _setting_pairs(pairs: list[str] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """`-o KEY VALUE` values (typer hands them over as "key=value") checked, and none of
    them also given as a flag."""
    from sovcli.engine.chat_session import check_given_once, parse_options

    split = [pair.split("=", 1) for pair in pairs or []]
    for item in split:
        if len(item) != 2:
            raise UsageError(f"-o {item[0]} needs a value", hint="-o KEY VALUE, e.g. -o top_k 20")
    options = parse_options((key, value) for key, value in split)
    check_given_once(flags, options)
    return options


def _resolve(
    ref: str, action: str, spec: SpecFlags
) -> tuple[InstalledModel, Preset | None, Speculation]:
    """MODEL (and the --draft model) through the store (pulled if needed) and the site policy
    (`action`), and the preset of a created model (None for any other)."""
    from sovcli.cli.progress import ensure_model
    from sovcli.governance.audit import require_trail
    from sovcli.store.preset import preset_of

    installed = ensure_model(ref, action=action)
    speculation = spec.resolve(action)
    require_trail()  # fail closed: no answer unless its audit record can be written
    return installed, preset_of(installed), speculation


def _load(
    installed: InstalledModel,
    settings: RunSettings,
    threads: int | None,
    verbose: bool,
    speculation: Speculation,
) -> Engine:
    """Load the model with the context, chat template and speculation the settings ask for."""
    from sovcli.engine.conversation import use_template
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    config = EngineConfig(
        model_path=str(installed.gguf_path), n_ctx=settings.ctx, n_threads=threads,
        verbose=verbose, **speculation.engine_fields(),
    )  # fmt: skip
    engine = Engine(config)
    use_template(engine, settings.template)
    return engine


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


def argument_text(prompt: str) -> str:
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


def read_prompt(prompt: str | None) -> str | None:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return decode_prompt(_read_stdin(), "stdin")
    if prompt is None:
        return None
    return argument_text(prompt)


def _generate(
    engine: Engine, prompt: str, settings: RunSettings, grammar: str | None
) -> GenerationResult:
    """Stream the completion of a rendered `prompt` to stdout."""
    from sovcli.engine.chat_session import stream_text
    from sovcli.engine.types import GenerationRequest

    request = GenerationRequest(
        prompt,
        max_tokens=settings.max_tokens,
        sampling=settings.sampling(grammar),
        stop=list(settings.stop),
    )
    result = stream_text(engine.submit(request), _write)
    if result.text and not result.text.endswith("\n"):
        _write("\n")
    return result


def run_command(
    model: OptionalModelArgument = None,
    prompt: PromptArgument = None,
    system: SystemOption = None,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    min_p: MinPOption = None,
    repeat_penalty: RepeatPenaltyOption = None,
    seed: SeedOption = None,
    max_tokens: MaxTokensOption = None,
    stop: StopOption = None,
    option: SettingPairsOption = None,
    fmt: FormatOption = None,
    schema: SchemaOption = None,
    attach: AttachOption = None,
    continue_: ContinueOption = False,
    save: SaveOption = False,
    ctx: CtxOption = None,
    threads: ThreadsOption = None,
    raw: RawOption = False,
    stats: StatsOption = False,
    verbose: VerboseOption = False,
    spec: SpecOption = None,
    draft: DraftOption = None,
    draft_max: DraftMaxOption = None,
) -> None:
    """Run MODEL on one prompt and stream the reply to stdout.

    The prompt comes from PROMPT, or from stdin when it is piped or PROMPT is "-".
    With no prompt on a terminal, it opens a chat. The model is pulled first if needed.
    MODEL may be left out when SOVCLI_DEFAULT_MODEL is set. A created model's preset
    (`sovcli create`) applies; flags and -o override it. Nothing is kept unless --save.

    Examples:

      sovcli run smollm2-135m "Name three primary colours." --temperature 0

      echo "Summarise: ..." | sovcli run smollm2-135m -o max_tokens 64 --stats

      sovcli run smollm2-135m -a contract.pdf "Who are the parties?"

      sovcli run smollm2-135m "List two colours" --schema colours.json

      SOVCLI_REPRODUCIBLE=0 sovcli run smollm2-135m -a memo.txt "Repeat it." --spec auto --stats

      sovcli run smollm2-135m "Hello" --save && sovcli run -c "And in French?"
    """
    _check_options(system, stop)
    flags = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p}
    flags |= {"repeat_penalty": repeat_penalty, "seed": seed, "max_tokens": max_tokens, "ctx": ctx}
    grammar, schema_doc = output_grammar(fmt, schema)
    job = RunJob(
        model, prompt, system, stop, flags, _setting_pairs(option, flags), grammar,
        schema_doc, list(attach or []), continue_, save or flag("SOVCLI_SAVE_CONVERSATIONS"),
        raw, stats, threads, verbose, SpecFlags(spec, draft, draft_max),
    )  # fmt: skip
    if raw and (job.attach or continue_):
        raise UsageError("--raw cannot be used with -a or -c (they need the chat template)")
    _run(job)


def _run(job: RunJob) -> None:
    """Read the inputs, load the model, answer; keep the conversation if asked."""
    from sovcli.engine.chat_session import combine_settings
    from sovcli.engine.conversation import load_conversation
    from sovcli.governance.audit import audit_answer

    saved = load_conversation() if job.continuing else None
    ref, prompt = pick_model(job.model, job.prompt, saved.model if saved else None)
    text = read_prompt(prompt)
    documents = [read_attachment(path) for path in job.attach]
    if text is None and not documents and saved is None:  # a terminal and no prompt: chat
        if job.grammar is not None:
            raise UsageError("--format and --schema need a prompt", hint='sovcli run MODEL "..."')
        _chat(ref, job.flags, job.options, job.system, job.threads, job.verbose, job.stop,
              job.spec)  # fmt: skip
        return
    if text is None or not text.strip():
        raise UsageError("the prompt is empty", hint='Give a prompt: sovcli run MODEL "..."')
    installed, preset, speculation = _resolve(ref, "run", job.spec)
    settings = combine_settings(job.flags, job.options, preset, system=job.system, stop=job.stop)
    engine = _load(installed, settings, job.threads, job.verbose, speculation)
    try:
        if job.raw:
            result = _generate(engine, text, settings, job.grammar)
            messages: list[dict[str, Any]] = []
        else:
            messages = _messages(saved, job.system, settings.system, text, documents)
            prompt_text, messages = _fit(engine, messages, settings, documents)
            result = _generate(engine, prompt_text, settings, job.grammar)
    finally:
        engine.close()
    audit_answer("run", installed, result, engine=engine, prompt=messages or text,
                 params=settings.sampling(job.grammar), max_tokens=settings.max_tokens,
                 stop=list(settings.stop), **speculation.audit_fields())  # fmt: skip
    _finish(job, result, installed, messages)


def _messages(
    saved: SavedConversation | None,
    flag_system: str | None,
    system: str | None,
    text: str,
    documents: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """The conversation to send: a continued one's messages, the system prompt (--system
    replaces a continued conversation's), the new user message with its documents."""
    history = list(saved.messages) if saved else []
    has_system = any(m["role"] == "system" for m in history)
    if flag_system is not None or not has_system:
        history = [m for m in history if m["role"] != "system"]
        if system:
            history.insert(0, {"role": "system", "content": system})
    return [*history, {"role": "user", "content": with_documents(text, documents)}]


def _fit(
    engine: Engine,
    messages: list[dict[str, Any]],
    settings: RunSettings,
    documents: list[tuple[str, str]],
) -> tuple[str, list[dict[str, Any]]]:
    """The rendered prompt; a continued conversation's oldest turns go when it outgrows the
    context; documents that do not fit are a ContextOverflowError with a hint."""
    from sovcli.engine.conversation import fit_messages
    from sovcli.errors import ContextOverflowError

    try:
        kept, prompt, dropped = fit_messages(engine, messages, settings.max_tokens or 256)
    except ContextOverflowError as exc:
        if not documents:
            raise
        names = ", ".join(name for name, _text in documents)
        raise ContextOverflowError(
            f"{names} does not fit the context with the question: {exc.message}",
            hint=f"Raise --ctx (the model was trained on {engine.info.n_ctx_train} tokens), or "
            "use `sovcli batch FILE --prompt ...`, which splits long documents into chunks.",
        ) from None
    if dropped:
        _note(f"(the oldest {dropped} message(s) were dropped to fit the context)")
    return prompt, kept


def _finish(
    job: RunJob,
    result: GenerationResult,
    installed: InstalledModel,
    messages: list[dict[str, Any]],
) -> None:
    """Stats, the conversation kept (when asked), and the exit status of a run."""
    if job.stats:
        from sovcli.engine.chat_session import format_stats

        _note(format_stats(result))
    if result.finish_reason == "error":
        raise SovcliError(f"generation failed: {result.error}")
    if result.finish_reason == "cancelled":
        raise KeyboardInterrupt
    if messages and (job.save or job.continuing):
        from sovcli.engine.conversation import save_conversation

        ref = installed.ref if installed.manifest.get("files") else str(installed.gguf_path)
        save_conversation(ref, [*messages, {"role": "assistant", "content": result.text}])
    if job.grammar is not None:
        check_json_reply(result.text, job.schema, result.finish_reason)


def chat_command(
    model: OptionalModelArgument = None,
    system: SystemOption = None,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    top_k: TopKOption = None,
    min_p: MinPOption = None,
    repeat_penalty: RepeatPenaltyOption = None,
    seed: SeedOption = None,
    max_tokens: MaxTokensOption = None,
    option: SettingPairsOption = None,
    ctx: CtxOption = None,
    threads: ThreadsOption = None,
    verbose: VerboseOption = False,
    spec: SpecOption = None,
    draft: DraftOption = None,
    draft_max: DraftMaxOption = None,
) -> None:
    """Chat with MODEL in an interactive session (replies stream as they are written).

    Enter sends a line; start and end a multi-line message with \"\"\". Ctrl-C stops the
    current reply and keeps the conversation; Ctrl-D (or /exit) quits. Type /help for the
    slash commands (/system /clear /save /load /set /stats). Input history is kept for the
    session only; nothing is written unless you /save. With stdin not a terminal, each line
    is a message and no prompts are printed. MODEL may be left out when
    SOVCLI_DEFAULT_MODEL is set; a created model's preset applies (flags override it).

    Example:

      sovcli chat smollm2-135m --system "You answer in one sentence." -o temperature 0.2
    """
    _check_options(system)
    flags = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p}
    flags |= {"repeat_penalty": repeat_penalty, "seed": seed, "max_tokens": max_tokens, "ctx": ctx}
    options = _setting_pairs(option, flags)
    spec_flags = SpecFlags(spec, draft, draft_max)
    ref, _prompt = pick_model(model, None)
    _chat(ref, flags, options, system, threads, verbose, None, spec_flags)


def _chat(
    ref: str,
    flags: dict[str, Any],
    options: dict[str, Any],
    system: str | None,
    threads: int | None,
    verbose: bool,
    stop: list[str] | None,
    spec: SpecFlags,
) -> None:
    """Load the model and run the chat REPL until the user leaves."""
    from sovcli.engine.chat_session import RUN_DEFAULTS, ChatSession, combine_settings
    from sovcli.governance.audit import audit_answer

    installed, preset, speculation = _resolve(ref, "chat", spec)
    defaults = RUN_DEFAULTS | {"max_tokens": 1024}
    settings = combine_settings(flags, options, preset, system=system, stop=stop, defaults=defaults)
    engine = _load(installed, settings, threads, verbose, speculation)
    try:
        session = ChatSession(
            engine,
            settings.sampling(),
            settings.max_tokens,
            model_name=installed.name,
            system=settings.system,
            stop=settings.stop,
        )
        session.on_answer = lambda result, conversation: audit_answer(
            "chat", installed, result, engine=engine, prompt=conversation,
            params=session.sampling, max_tokens=session.max_tokens, stop=session.stop,
            **speculation.audit_fields())  # fmt: skip
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
