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
    float,
    typer.Option(
        "--temperature", callback=_checked("temperature"), help="0 = greedy, reproducible."
    ),
]
TopPOption = Annotated[
    float, typer.Option("--top-p", callback=_checked("top_p"), help="Nucleus sampling, (0, 1].")
]
TopKOption = Annotated[
    int, typer.Option("--top-k", callback=_checked("top_k"), help="0 = no top-k cut.")
]
MinPOption = Annotated[
    float, typer.Option("--min-p", callback=_checked("min_p"), help="Min-p sampling, [0, 1].")
]
RepeatPenaltyOption = Annotated[
    float,
    typer.Option("--repeat-penalty", callback=_checked("repeat_penalty"), help="1 = off."),
]
SeedOption = Annotated[
    int | None,
    typer.Option("--seed", callback=_checked("seed"), help="Fixed seed: reproducible."),
]
MaxTokensOption = Annotated[
    int,
    typer.Option(
        "--max-tokens",
        callback=_checked("max_tokens"),
        help="Tokens per reply; 0 = until the context is full.",
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log.")]
