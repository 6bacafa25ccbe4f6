"""Options shared by several commands, defined once (typer `Annotated` types).

def list_command(json_output: JsonOption = False) -> None: ...
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sovcli.engine.types import MIN_CTX

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress on stderr (also SOVCLI_NO_PROGRESS=1).")
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option("--threads", "-t", min=1, help="CPU threads (default: physical cores)."),
]
CtxOption = Annotated[
    int | None,
    typer.Option(
        "--ctx", min=MIN_CTX, help="Context per sequence, in tokens (default: min(model, 4096))."
    ),
]
ModelArgument = Annotated[
    str,
    typer.Argument(
        help="Model: catalog alias (smollm2-135m), name:tag, hf:org/repo[:QUANT] or a .gguf path.",
        show_default=False,
    ),
]


def _checked(name: str):
    """A typer callback that checks a value against `SAMPLING_LIMITS[name]` (as /set does)."""

    def callback(value: Any) -> Any:
        from sovcli.engine.chat_session import range_problem

        problem = range_problem(name, value)
        if problem:
            raise typer.BadParameter(problem)
        return value

    return callback


# Generation options of `run` and `chat`; the ranges are those `/set` enforces in a chat.
SystemOption = Annotated[str | None, typer.Option("--system", help="System prompt.")]
TemperatureOption = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        callback=_checked("temperature"),
        help="0 = greedy, reproducible [default: 0.8].",
    ),
]
TopPOption = Annotated[
    float | None,
    typer.Option(
        "--top-p", callback=_checked("top_p"), help="Nucleus sampling, (0, 1] [default: 0.95]."
    ),
]
TopKOption = Annotated[
    int | None,
    typer.Option("--top-k", callback=_checked("top_k"), help="0 = no top-k cut [default: 40]."),
]
MinPOption = Annotated[
    float | None,
    typer.Option(
        "--min-p", callback=_checked("min_p"), help="Min-p sampling, [0, 1] [default: 0.05]."
    ),
]
RepeatPenaltyOption = Annotated[
    float | None,
    typer.Option(
        "--repeat-penalty", callback=_checked("repeat_penalty"), help="1 = off [default: 1]."
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option("--seed", callback=_checked("seed"), help="Fixed seed: reproducible."),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        callback=_checked("max_tokens"),
        help="Tokens per reply; 0 = until the context is full [default: run 512, chat 1024].",
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log.")]
# Unset, these defaults give way to a created model's preset (`sovcli create`) and to `-o`.

PAIR_METAVAR = "KEY VALUE"
"""An option with this metavar takes two values each time (`-o temperature 0.2`). typer
cannot declare that: `cli.main.SovcliCommand` joins the two into one `key=value` first."""


def join_pairs(args: list[str], flags: set[str]) -> list[str]:
    """`args` with each `-o KEY VALUE` as `-o KEY=VALUE` (a KEY=VALUE given as is is kept)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            out += args[i:]
            break
        if arg in flags and i + 1 < len(args) and "=" not in args[i]:
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
    return out


SettingPairsOption = Annotated[
    list[str] | None,
    typer.Option(
        "-o",
        "--option",
        metavar=PAIR_METAVAR,
        help="A setting, as llm's -o: temperature, top_p, top_k, min_p, seed, max_tokens, "
        "repeat_penalty, presence_penalty, frequency_penalty or ctx (repeatable).",
    ),
]
OptionalModelArgument = Annotated[
    str | None,
    typer.Argument(
        help="Model: catalog alias, name:tag, hf:org/repo or a .gguf path "
        "(default: SOVCLI_DEFAULT_MODEL).",
        show_default=False,
    ),
]
OcrOption = Annotated[
    str,
    typer.Option(
        "--ocr",
        help="OCR scanned pages and images: auto (pages without usable text), always, never.",
    ),
]
OcrLangOption = Annotated[
    str | None,
    typer.Option(
        "--ocr-lang",
        help="Tesseract languages, e.g. eng+fra+deu (default: those of eng, fra, deu installed).",
    ),
]


def _check_spec(value: str | None) -> str | None:
    """`--spec` is one of `settings.SPEC_MODES` (any case); else a usage error (exit 2)."""
    from sovcli.settings import SPEC_MODES

    if value is None:
        return None
    mode = value.strip().lower()
    if mode not in SPEC_MODES:
        choices = ", ".join(SPEC_MODES[:-1]) + f" or {SPEC_MODES[-1]}"
        raise typer.BadParameter(f"{value!r} is not a speculative mode; use {choices}")
    return mode


# Speculative decoding (docs/running.md#speculative-decoding); checked together and the
# draft model resolved in cli/speculation.py.
SpecOption = Annotated[
    str | None,
    typer.Option(
        "--spec",
        metavar="auto|always|off",
        callback=_check_spec,
        help="Speculative decoding: auto drafts tokens (from n-grams of the prompt and output, "
        "or --draft's model) and verifies them in one step where that pays; always drafts "
        "whenever there are drafts (for measuring); off never drafts [default: SOVCLI_SPEC, "
        "else auto]. Only with SOVCLI_REPRODUCIBLE=0: reproducible engines do not draft. The "
        "output keeps its distribution (greedy: the same text, up to numerical near-ties).",
    ),
]
DraftOption = Annotated[
    str | None,
    typer.Option(
        "--draft",
        metavar="MODEL",
        help="A small model that shares MODEL's vocabulary drafts the tokens (installed or "
        "pulled like MODEL, under the site policy; needs SOVCLI_REPRODUCIBLE=0).",
    ),
]
DraftMaxOption = Annotated[
    int | None,
    typer.Option(
        "--draft-max",
        metavar="N",
        min=1,
        max=32,
        help="Most tokens drafted per sequence and step (fewer where they do not pay) "
        "[default: 8].",
    ),
]
