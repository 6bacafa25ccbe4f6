"""CLI: `sovcli bench MODEL`, llama-bench-style speed figures for a model on this machine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from sovcli.cli.options import (
    DraftMaxOption,
    DraftOption,
    JsonOption,
    ModelArgument,
    QuietOption,
    SpecOption,
    ThreadsOption,
)
from sovcli.cli.speculation import SpecFlags
from sovcli.errors import UsageError

if TYPE_CHECKING:
    from sovcli.engine.benchmark import BenchReport


def _parse_parallel(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "0", "none"):
        return ()
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--parallel takes numbers separated by commas, not {text!r}") from None
    if any(v < 1 or v > 64 for v in values):
        raise UsageError("--parallel values must be between 1 and 64")
    return values


def render(report: BenchReport, name: str) -> str:
    """The figures as a two-column table of plain lines, titled with the model's `name`."""
    rows = [
        (f"pp{report.n_prompt}", f"{report.pp_tokens_per_s:.1f} t/s"),
        (f"tg{report.n_gen}", f"{report.tg_tokens_per_s:.1f} t/s"),
        (f"time to first token (pp{report.n_prompt})", f"{report.ttft_ms:.0f} ms"),
    ]
    single = report.parallel.get(1)
    for n_seq, rate in report.parallel.items():
        ratio = f" ({rate / single:.2f}x)" if single else ""
        rows.append((f"aggregate tg, {n_seq} sequences", f"{rate:.1f} t/s{ratio}"))
    rows.append(("peak RSS", f"{report.peak_rss_bytes / 2**20:.0f} MiB"))
    rows.append(("speculative decoding", _spec_text(report)))
    left = max(len(test) for test, _ in rows) + 2
    right = max(len(result) for _, result in rows)
    lines = [f"{name}, {report.threads} threads", f"{'test':<{left}}{'result':>{right}}"]
    lines += [f"{test:<{left}}{result:>{right}}" for test, result in rows]
    return "\n".join(lines) + "\n"


def _spec_text(report: BenchReport) -> str:
    """The mode, the draft model and what was drafted and accepted over the tests."""
    text = report.speculative + (f", draft {report.draft_model}" if report.draft_model else "")
    if report.drafted_tokens:
        share = 100 * report.accepted_tokens / report.drafted_tokens
        text += f", drafted {report.drafted_tokens}, accepted {report.accepted_tokens} "
        text += f"({share:.0f}%)"
    return text


def bench_command(
    model: ModelArgument,
    threads: ThreadsOption = None,
    pp: Annotated[int, typer.Option("--pp", min=1, help="Prompt tokens for the pp test.")] = 128,
    tg: Annotated[int, typer.Option("--tg", min=1, help="Tokens generated in tg.")] = 128,
    parallel: Annotated[
        str, typer.Option("--parallel", help="Parallel sequence counts; 0 skips the test.")
    ] = "1,2,4,8",
    parallel_tokens: Annotated[
        int, typer.Option("--parallel-tokens", min=1, help="Tokens per sequence.")
    ] = 64,
    repetitions: Annotated[
        int, typer.Option("--repetitions", "-r", min=1, help="Runs per test (median).")
    ] = 3,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    spec: SpecOption = None,
    draft: DraftOption = None,
    draft_max: DraftMaxOption = None,
) -> None:
    """Measure MODEL on this machine: prompt processing (pp) and generation (tg) tokens/s
    like llama-bench, time to first token, peak memory, and aggregate generation with
    1, 2, 4 and 8 parallel sequences (continuous batching).

    Examples:

    \b
      sovcli bench smollm2-135m
      sovcli bench ./model.gguf --threads 2 --json
      sovcli bench smollm2-135m --pp 512 --tg 128 --parallel 1,4,8 --repetitions 5
      sovcli bench smollm2-135m --spec off --json
    """
    from sovcli.cli.output import print_json
    from sovcli.cli.progress import ensure_model, make_progress
    from sovcli.engine.benchmark import run_bench

    levels = _parse_parallel(parallel)
    flags = SpecFlags(spec, draft, draft_max)  # --draft with --spec off: refused here
    installed = ensure_model(model, action="bench")
    speculation = flags.resolve("bench", quiet=quiet)
    with make_progress(quiet) as progress:
        report = run_bench(
            str(installed.gguf_path),
            threads=threads,
            n_prompt=pp,
            n_gen=tg,
            parallel=levels,
            parallel_gen=parallel_tokens,
            repetitions=repetitions,
            progress=progress,
            **speculation.engine_fields(),
        )
    if json_output:
        print_json(report.as_dict())
        return
    sys.stdout.write(render(report, installed.name))
    sys.stdout.flush()


COMMANDS = {"bench": bench_command}
