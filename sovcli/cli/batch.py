"""CLI: `sovcli batch` (run a model over a folder) and `sovcli batch-report` (tables).

The run itself is `sovcli.batch.session.BatchSession`; this module turns options into a job,
draws its progress and prints the summary as plain lines on stderr (never re-wrapped).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sovcli.cli.options import (
    CtxOption,
    DraftMaxOption,
    DraftOption,
    JsonOption,
    ModelArgument,
    OcrLangOption,
    OcrOption,
    QuietOption,
    SpecOption,
    ThreadsOption,
)
from sovcli.engine.types import MIN_CTX
from sovcli.errors import UsageError

if TYPE_CHECKING:
    from sovcli.batch.backends import GenerationSettings
    from sovcli.batch.isolate import ExtractOptions
    from sovcli.batch.prompt import PromptTemplate
    from sovcli.batch.runner import Document, Summary
    from sovcli.batch.session import BatchSession

REPORT_FORMATS = ("csv", "md", "markdown")
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as cli/main.py answers Ctrl-C
MAX_FAILURES_SHOWN = 20

InputArgument = Annotated[
    Path,
    typer.Argument(
        help="Folder of documents (read recursively), or a single document.",
        show_default=False,
        exists=True,
    ),
]
OutputOption = Annotated[
    Path, typer.Option("-o", "--output", help="Results file (JSON lines).", show_default=False)
]
PromptOption = Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt template.")]
PromptFileOption = Annotated[
    Path | None, typer.Option("--prompt-file", help="Prompt template file.")
]
SchemaOption = Annotated[
    Path | None,
    typer.Option("--schema", help="JSON schema: output constrained to it and stored parsed."),
]
ParallelOption = Annotated[
    int, typer.Option("--parallel", "-j", min=1, max=64, help="Documents in flight.")
]
IncludeOption = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only files matching this glob (repeatable)."),
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Skip files matching this glob (repeatable)."),
]
ChunkTokensOption = Annotated[
    int | None,
    typer.Option(
        "--chunk-tokens", min=64, help="Max tokens of document per chunk (default: what fits)."
    ),
]
ChunkOverlapOption = Annotated[
    int, typer.Option("--chunk-overlap", min=0, help="Tokens repeated between chunks.")
]
MaxTokensOption = Annotated[
    int, typer.Option("--max-tokens", "-n", min=1, help="Max tokens per answer.")
]
TemperatureOption = Annotated[
    float, typer.Option("--temperature", min=0.0, help="0 is greedy (reproducible).")
]
SeedOption = Annotated[int, typer.Option("--seed", min=0, help="Sampling seed.")]
EndpointOption = Annotated[
    list[str] | None,
    typer.Option("--endpoint", help="OpenAI-compatible server to send the work to (repeatable)."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", help="Bearer key for --endpoint servers (default: SOVCLI_API_KEY)."),
]
RemoteContextOption = Annotated[
    int,
    typer.Option(
        "--remote-context", min=MIN_CTX, help="Context size assumed for --endpoint servers."
    ),
]
ProxyOption = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        help="HTTP proxy for --endpoint servers off this machine (proxy variables are ignored).",
    ),
]
FollowSymlinksOption = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks", help="Also read symbolic links that point outside the folder."
    ),
]
RetryOption = Annotated[
    bool, typer.Option("--retry-failed", help="Redo documents that failed before.")
]


def _check_retry(value: str | None) -> str | None:
    from sovcli.batch.runner import RETRY_CHOICES

    words = [w.strip() for w in (value or "").split(",") if w.strip()]
    wrong = [w for w in words if w not in RETRY_CHOICES]
    if wrong:
        raise typer.BadParameter(f"unknown outcome '{wrong[0]}'; use {', '.join(RETRY_CHOICES)}")
    return ",".join(words) or None


RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run across a Ray cluster: its head address (host:6379), or auto for the one "
        "started on this machine; one engine per node (needs sovcli[ray], RAY_AUTH_MODE=token).",
    ),
]
RetryOutcomes = Annotated[
    str | None,
    typer.Option(
        "--retry",
        callback=_check_retry,
        help="Redo only the documents with these outcomes (truncated,failed), with this run's "
        "options (e.g. a higher --max-tokens); the others are kept.",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="List what would be processed, run nothing.")
]
DocTimeout = Annotated[
    float, typer.Option("--doc-timeout", help="Seconds to extract one document's text.")
]
DocMemory = Annotated[
    int, typer.Option("--doc-memory", help="MiB of memory to extract one document's text.")
]
Encoding = Annotated[
    str | None,
    typer.Option("--encoding", help="Encoding of .txt/.csv/.html files (default: detected)."),
]


def _check_format(value: str | None) -> str | None:
    if value is not None and value not in REPORT_FORMATS:
        raise typer.BadParameter(f"unknown format '{value}'; use csv or md")
    return value


FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", callback=_check_format, help="Also print a report on stdout: csv or md."
    ),
]


def batch_command(
    model: ModelArgument, input_dir: InputArgument, output: OutputOption,
    prompt: PromptOption = None, prompt_file: PromptFileOption = None, schema: SchemaOption = None,
    parallel: ParallelOption = 4, include: IncludeOption = None, exclude: ExcludeOption = None,
    chunk_tokens: ChunkTokensOption = None, chunk_overlap: ChunkOverlapOption = 64,
    max_tokens: MaxTokensOption = 512, temperature: TemperatureOption = 0.0, seed: SeedOption = 0,
    ctx: CtxOption = None, endpoint: EndpointOption = None, api_key: ApiKeyOption = None,
    remote_context: RemoteContextOption = 4096, proxy: ProxyOption = None,
    follow_symlinks: FollowSymlinksOption = False, retry_failed: RetryOption = False,
    dry_run: DryRunOption = False, report_format: FormatOption = None,
    json_output: JsonOption = False, quiet: QuietOption = False, threads: ThreadsOption = None,
    doc_timeout: DocTimeout = 120.0, doc_memory: DocMemory = 1024, encoding: Encoding = None,
    ocr: OcrOption = "auto", ocr_lang: OcrLangOption = None, retry: RetryOutcomes = None,
    ray: RayOption = None, spec: SpecOption = None, draft: DraftOption = None,
    draft_max: DraftMaxOption = None,
) -> None:  # fmt: skip
    """Run a model over every document in a folder (or one file); one JSON line each.

    Reads .txt .md .html .pdf .docx .csv .eml .msg and images (OCR: --ocr), hidden files
    skipped; a document that cannot be read is recorded with its reason. Long ones are chunked.
    Re-running the same command resumes (a run killed at any moment loses nothing). Exit code
    1 when a document failed, 2 with no documents, 8 when the results file cannot be written.
    The prompt is a template: {text} is the document, {name} its file name, {path} its path.

    Examples:

    \b
      sovcli batch smollm2-135m ./contracts -o summaries.jsonl --parallel 8 \\
          --prompt "Summarise {name} in 3 bullet points: {text}"
      sovcli batch smollm2-135m ./kyc -o kyc.jsonl --include "*.pdf" \\
          --prompt-file extract.txt --schema kyc.schema.json
      sovcli batch smollm2-135m ./tickets -o tickets.jsonl --prompt "Classify: {text}" \\
          --endpoint http://10.0.0.5:8080 --endpoint http://10.0.0.6:8080 --dry-run
      sovcli batch smollm2-135m ./archive -o archive.jsonl --ray 10.0.0.5:6379 \\
          --max-tokens 1024 --retry truncated --prompt "Summarise {name}: {text}"
      SOVCLI_REPRODUCIBLE=0 sovcli batch smollm2-135m ./letters -o plain.jsonl --spec auto \\
          --draft-max 12 --prompt "Rewrite this letter in plain English: {text}"
    """
    from sovcli.batch.runner import BatchJob
    from sovcli.batch.session import BatchSession
    from sovcli.cli.speculation import SpecFlags, effective_mode

    flags = SpecFlags(spec, draft, draft_max)  # --draft with --spec off: refused here
    job = BatchJob(  # bad options (prompt, schema) fail before any model is touched
        input_dir=input_dir, output=output, template=_template(prompt, prompt_file), model={},
        settings=_settings(schema, not endpoint and not dry_run, max_tokens, temperature, seed),
        chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, parallel=parallel,
        context=remote_context if endpoint else ctx, include=tuple(include or ()),
        exclude=tuple(exclude or ()), retry_failed=retry_failed, follow_symlinks=follow_symlinks,
        retry=frozenset((retry or "").split(",")) - {""},
        extract=_extract_options(doc_timeout, doc_memory, encoding, ocr, ocr_lang),
        speculative=None if endpoint else effective_mode(spec), draft_max=draft_max,
    )  # fmt: skip
    session = BatchSession(
        job, model_ref=model, endpoints=tuple(endpoint or ()), ctx=ctx, threads=threads,
        api_key=api_key, remote_context=remote_context, proxy=proxy, notify=_err, ray=ray,
        draft_ref=flags.draft,
    )  # fmt: skip
    _execute(session, dry_run, quiet, json_output, report_format)


def _execute(
    session: BatchSession, dry_run: bool, quiet: bool, json_output: bool, fmt: str | None
) -> None:
    """The dry run's plan, or the run with its progress drawn and its summary printed."""
    from sovcli.cli.progress import make_progress

    if dry_run:
        _print_plan(session.plan(), json_output)
        return
    with make_progress(quiet) as progress, _running(session):
        session.progress = progress
        summary = session.run()
    _finish(summary, session.job.output, json_output, fmt)


@contextmanager
def _running(session: BatchSession) -> Iterator[None]:
    """Around the run: Ray's own messages (a node that died...) go to stderr, so stdout holds
    only --json/--format output; Ctrl-C says what is saved (documents, chunks kept)."""
    try:
        with redirect_stdout(sys.stderr) if session.ray else nullcontext():
            yield
    except KeyboardInterrupt as exc:
        saved, kept = session.interrupted_counts
        _err(f"\ninterrupted: {saved} documents saved, {kept} chunks in progress kept")
        if getattr(exc, "signum", None) is not None:  # SIGTERM/SIGHUP: the usual exit status
            raise
        raise typer.Exit(code=INTERRUPTED_EXIT) from None


def _extract_options(
    timeout: float, memory_mib: int, encoding: str | None, ocr: str, ocr_lang: str | None
) -> ExtractOptions:
    """--doc-timeout, --doc-memory, --encoding, --ocr and --ocr-lang, checked (UsageError)."""
    from sovcli.batch.isolate import extract_options

    return extract_options(timeout, memory_mib, encoding, ocr, ocr_lang)


def _template(prompt: str | None, prompt_file: Path | None) -> PromptTemplate:
    from sovcli.batch.prompt import PromptTemplate

    return PromptTemplate(_read_prompt(prompt, prompt_file))


def _settings(
    schema: Path | None, local: bool, max_tokens: int, temperature: float, seed: int
) -> GenerationSettings:
    """How every completion is sampled; a --schema also constrains local output (GBNF)."""
    from sovcli.batch.backends import GenerationSettings

    schema_obj = grammar = None
    if schema is not None:
        from sovcli.batch.schema import load_schema

        schema_obj = load_schema(schema)
        if local:
            from sovcli.engine.grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(schema_obj)
    return GenerationSettings(
        max_tokens=max_tokens, temperature=temperature, seed=seed, schema=schema_obj,
        grammar=grammar,
    )  # fmt: skip


def _finish(summary: Summary, output: Path, json_output: bool, report_format: str | None) -> None:
    """The summary on stderr (JSON on stdout with --json), the --format report, the exit code."""
    from sovcli.cli.output import print_json

    for line in summary_lines(summary, output):
        _err(line)
    if json_output:
        print_json(summary.as_dict())
    if report_format is not None:
        from sovcli.batch.report import render_report

        sys.stdout.write(render_report(output, report_format))
        sys.stdout.flush()
    if summary.any_failed:
        raise typer.Exit(code=1)


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if (prompt is None) == (prompt_file is None):
        raise UsageError(
            "give exactly one of --prompt or --prompt-file",
            hint='e.g. --prompt "Summarise {name} in three bullet points: {text}"',
        )
    if prompt is not None:
        return prompt
    assert prompt_file is not None
    try:
        return prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read prompt file {prompt_file}: {exc}") from exc


def _err(line: str) -> None:
    """One plain line on stderr: no markup, never re-wrapped (pipes and logs keep it whole)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _print_plan(documents: list[Document], json_output: bool) -> None:
    from sovcli.cli.output import print_json

    if json_output:
        print_json(
            [
                {"path": d.display, "bytes": d.size, "sha256": d.sha256, "state": d.state}
                for d in documents
            ]
        )
    else:
        for doc in documents:
            sys.stdout.write(f"{doc.state:<7} {doc.size:>12,}  {doc.display}\n")
        sys.stdout.flush()
    to_do = sum(1 for d in documents if d.state in ("todo", "redo"))
    _err(
        f"dry run: {len(documents)} documents, {to_do} to process, "
        f"{len(documents) - to_do} already done"
    )


def summary_lines(summary: Summary, output: Path) -> list[str]:
    """The summary a run ends with, as plain lines."""
    rate = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
    failed_total = summary.failed + summary.failed_before
    cut = f"{summary.truncated} truncated, " if summary.truncated else ""
    lines = [
        f"{summary.total} documents: {summary.ok + summary.skipped - summary.failed_before} ok, "
        f"{cut}{failed_total} failed, {summary.skipped} already done; "
        f"{summary.completion_tokens:,} tokens generated in {summary.seconds:.1f} s "
        f"({rate:.1f} tok/s) -> {output}"
    ]
    if summary.drafted_tokens:
        share = 100 * summary.accepted_tokens / summary.drafted_tokens
        lines.append(
            f"speculative decoding: drafted {summary.drafted_tokens:,}, "
            f"accepted {summary.accepted_tokens:,} ({share:.0f}%)"
        )
    if summary.truncated:
        lines.append(
            f"{summary.truncated} answers cut at --max-tokens (status truncated): redo them "
            "with --retry truncated --max-tokens N"
        )
    if summary.not_processed:
        lines.append(
            f"{summary.not_processed} documents not processed: re-run the same command to resume"
        )
    lines += [f"  failed: {path}: {error}" for path, error in summary.failures[:MAX_FAILURES_SHOWN]]
    if len(summary.failures) > MAX_FAILURES_SHOWN:
        more = len(summary.failures) - MAX_FAILURES_SHOWN
        lines.append(f"  ... and {more} more (see {output})")
    return lines


def batch_report_command(
    results: Annotated[
        Path, typer.Argument(help="A results file written by `sovcli batch`.", show_default=False)
    ],
    report_format: Annotated[str, typer.Option("--format", help="csv or md.")] = "md",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Turn a batch results file into a CSV or Markdown table (one row per document).

    A file that holds no batch results is refused (exit code 2).

    Examples:

    \b
      sovcli batch-report summaries.jsonl --format md > summaries.md
      sovcli batch-report kyc.jsonl --format csv -o kyc.csv
    """
    from sovcli.batch.report import render_report

    text = render_report(results, report_format)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from sovcli.fsutil import atomic_write_text

    atomic_write_text(output, text)
    _err(f"wrote {output}")


COMMANDS = {"batch": batch_command, "batch-report": batch_report_command}
