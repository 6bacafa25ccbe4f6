"""CLI: `sovcli embed MODEL TEXT` prints the text's embedding as a JSON array.

`--lines` embeds each line of the input and prints one JSON object per line. The vectors
are the engine's (`Engine.embed`: L2-normalised, mean pooling unless the model defines one),
the same as the server's `/v1/embeddings`.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sovcli.cli.options import OptionalModelArgument, ThreadsOption, VerboseOption
from sovcli.errors import ContextOverflowError, UsageError

TextArgument = Annotated[
    str | None,
    typer.Argument(help='The text; "-" (or nothing, with stdin piped) reads stdin.'),
]
LinesOption = Annotated[
    bool,
    typer.Option(
        "--lines",
        help='Embed each line: one JSON object per line, {"line": N, "embedding": [...]}.',
    ),
]


def _inputs(text: str | None, lines: bool) -> list[tuple[int, str]]:
    """(line number, text) of every input; blank lines are skipped with --lines."""
    from sovcli.cli.run import argument_text, read_prompt

    if text is not None and text != "-":
        body = argument_text(text)
    else:
        body = read_prompt(text) if text == "-" or not sys.stdin.isatty() else None
    if body is None:
        raise UsageError("no text to embed", hint='sovcli embed MODEL "text", or pipe it in')
    if not lines:
        if not body.strip():
            raise UsageError("the text is empty")
        return [(1, body)]
    found = [(n, line) for n, line in enumerate(body.splitlines(), 1) if line.strip()]
    if not found:
        raise UsageError("no line to embed (every line is blank)")
    return found


def embed_command(
    model: OptionalModelArgument = None,
    text: TextArgument = None,
    lines: LinesOption = False,
    threads: ThreadsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Print the embedding of TEXT (or stdin) as a JSON array of floats.

    MODEL may be left out when SOVCLI_DEFAULT_MODEL is set. Long texts are refused (the
    embedding context holds up to 2048 tokens): split them first.

    \b
    Examples:
      sovcli embed smollm2-135m "The invoice is overdue."
      sovcli embed smollm2-135m --lines < sentences.txt > vectors.jsonl
    """
    from sovcli.cli.inputs import pick_model
    from sovcli.cli.progress import ensure_model
    from sovcli.engine.core import Engine
    from sovcli.engine.types import MIN_CTX, EngineConfig

    ref, text = pick_model(model, text)
    inputs = _inputs(text, lines)
    installed = ensure_model(ref, action="embed")
    config = EngineConfig(
        model_path=str(installed.gguf_path), n_ctx=MIN_CTX, n_threads=threads, verbose=verbose
    )
    with Engine(config) as engine:
        for number, line in inputs:
            try:
                vector = engine.embed([line])[0]
            except ContextOverflowError as exc:
                where = f"line {number}: " if lines else ""
                raise ContextOverflowError(where + exc.message, hint=exc.hint) from None
            item = {"line": number, "embedding": vector} if lines else vector
            sys.stdout.write(json.dumps(item) + "\n")
            sys.stdout.flush()


COMMANDS = {"embed": embed_command}
