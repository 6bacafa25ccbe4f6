"""CLI: `sovcli bench MODEL`, llama-bench-style speed figures for a model on this machine."""

from __future__ import annotations

import typer

from sovcli.errors import UsageError

BENCH_HELP = """Measure MODEL on this machine: prompt processing (pp) and generation (tg) tokens/s
like llama-bench, time to first token, peak memory, and aggregate generation with
1, 2, 4 and 8 parallel sequences (continuous batching).

Examples:

  sovcli bench smollm2-135m

  sovcli bench ./model.gguf --threads 2 --json

  sovcli bench smollm2-135m --pp 512 --tg 128 --parallel 1,4,8 --repetitions 5
"""


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


def register(app: typer.Typer) -> None:
    """Add `bench` to the app."""

    @app.command("bench", help=BENCH_HELP)
    def bench_command(
        model: str = typer.Argument(..., help="Alias, name:tag, hf:org/repo or a .gguf path."),
        threads: int | None = typer.Option(None, "--threads", help="Default: physical cores."),
        pp: int = typer.Option(128, "--pp", help="Prompt tokens for the pp test."),
        tg: int = typer.Option(128, "--tg", help="Generated tokens for the tg test."),
        parallel: str = typer.Option(
            "1,2,4,8", "--parallel", help="Parallel sequence counts; 0 skips the test."
        ),
        parallel_tokens: int = typer.Option(64, "--parallel-tokens", help="Tokens per sequence."),
        repetitions: int = typer.Option(3, "--repetitions", "-r", help="Runs per test (median)."),
        json_output: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    ) -> None:
        from sovcli.console import log, out_console, print_json
        from sovcli.engine.benchmark import run_bench
        from sovcli.store import ensure_model

        if pp < 1 or tg < 1 or repetitions < 1 or parallel_tokens < 1:
            raise UsageError("--pp, --tg, --parallel-tokens and --repetitions must be >= 1")
        levels = _parse_parallel(parallel)
        installed = ensure_model(model)
        report = run_bench(
            str(installed.gguf_path),
            threads=threads,
            n_prompt=pp,
            n_gen=tg,
            parallel=levels,
            parallel_gen=parallel_tokens,
            repetitions=repetitions,
            progress=lambda msg: log(f"bench: {msg}"),
        )
        if json_output:
            print_json(report.as_dict())
            return
        from rich.table import Table

        table = Table(title=f"{report.model}, {report.threads} threads")
        table.add_column("test")
        table.add_column("result", justify="right")
        table.add_row(f"pp{report.n_prompt}", f"{report.pp_tokens_per_s:.1f} t/s")
        table.add_row(f"tg{report.n_gen}", f"{report.tg_tokens_per_s:.1f} t/s")
        table.add_row(f"time to first token (pp{report.n_prompt})", f"{report.ttft_ms:.0f} ms")
        single = report.parallel.get(1)
        for n_seq, rate in report.parallel.items():
            ratio = f" ({rate / single:.2f}x)" if single else ""
            table.add_row(f"aggregate tg, {n_seq} sequences", f"{rate:.1f} t/s{ratio}")
        table.add_row("peak RSS", f"{report.peak_rss_bytes / 2**20:.0f} MiB")
        out_console().print(table)
