"""CLI: `sovcli batch` (run a model over a folder) and `sovcli batch-report` (tables)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from sovcli.errors import NetworkError, UsageError

BATCH_HELP = """Run a model over every document in a folder; one JSON line per document.

Reads .txt .md .html .pdf (text layer) .docx .csv .eml recursively (hidden files skipped).
A document that cannot be read (scanned PDF, encrypted, corrupt, empty, binary, other type)
is recorded with its reason and the run goes on. Long documents are split into chunks of the
context's size; summaries are combined map-reduce style, --schema extractions merged.

Re-running the same command resumes: documents already done (same content, model, prompt and
parameters) are skipped, changed ones redone; a run killed at any moment loses nothing.
The exit code is 1 when any document failed.

The prompt is a template: {text} is the document, {name} its file name, {path} its path
relative to the folder ({{name}} for a literal brace). Without {text} the document is
appended to the prompt.

Examples:

\b
  sovcli batch smollm2-135m ./contracts -o summaries.jsonl --parallel 8 \\
      --prompt "Summarise {name} in 3 bullet points: {text}"
  sovcli batch smollm2-135m ./kyc -o kyc.jsonl --include "*.pdf" \\
      --prompt-file extract.txt --schema kyc.schema.json
  sovcli batch smollm2-135m ./tickets -o tickets.jsonl --prompt "Classify: {text}" \\
      --endpoint http://10.0.0.5:8080 --endpoint http://10.0.0.6:8080
  sovcli batch smollm2-135m ./contracts -o summaries.jsonl --prompt "Summarise: {text}" --dry-run
  sovcli batch-report summaries.jsonl --format md > summaries.md
"""

REPORT_HELP = """Turn a batch results file into a CSV or Markdown table (one row per document).

Examples:

\b
  sovcli batch-report summaries.jsonl --format md > summaries.md
  sovcli batch-report kyc.jsonl --format csv -o kyc.csv
"""


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("batch", help=BATCH_HELP, no_args_is_help=True)
    def _batch(
        model: str = typer.Argument(
            ..., help="Model: alias, name:tag, hf:org/repo or a .gguf path."
        ),
        input_dir: Path = typer.Argument(..., help="Folder of documents (read recursively)."),
        output: Path = typer.Option(..., "-o", "--output", help="Results file (JSON lines)."),
        prompt: str | None = typer.Option(None, "--prompt", "-p", help="Prompt template."),
        prompt_file: Path | None = typer.Option(
            None, "--prompt-file", help="Prompt template file."
        ),
        schema: Path | None = typer.Option(
            None, "--schema", help="JSON schema: output constrained to it and stored parsed."
        ),
        parallel: int = typer.Option(
            4, "--parallel", "-j", min=1, max=64, help="Documents in flight."
        ),
        include: list[str] = typer.Option(
            [], "--include", help="Only files matching this glob (repeatable)."
        ),
        exclude: list[str] = typer.Option(
            [], "--exclude", help="Skip files matching this glob (repeatable)."
        ),
        chunk_tokens: int | None = typer.Option(
            None,
            "--chunk-tokens",
            min=64,
            help="Max tokens of document per chunk (default: what fits).",
        ),
        chunk_overlap: int = typer.Option(
            64, "--chunk-overlap", min=0, help="Tokens repeated between chunks."
        ),
        max_tokens: int = typer.Option(
            512, "--max-tokens", "-n", min=1, help="Max tokens per answer."
        ),
        temperature: float = typer.Option(
            0.0, "--temperature", min=0.0, help="0 is greedy (reproducible)."
        ),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
        ctx: int | None = typer.Option(
            None, "--ctx", min=256, help="Context per sequence (tokens)."
        ),
        endpoint: list[str] = typer.Option(
            [], "--endpoint", help="OpenAI-compatible server to send the work to (repeatable)."
        ),
        api_key: str | None = typer.Option(
            None, "--api-key", envvar="SOVCLI_API_KEY", help="Bearer key for --endpoint servers."
        ),
        remote_context: int = typer.Option(
            4096, "--remote-context", min=256, help="Context size assumed for --endpoint servers."
        ),
        retry_failed: bool = typer.Option(
            False, "--retry-failed", help="Redo documents that failed before."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="List what would be processed, run nothing."
        ),
        report_format: str | None = typer.Option(
            None, "--format", help="Also print a report of the results on stdout: csv or md."
        ),
        json_output: bool = typer.Option(
            False, "--json", help="Print the summary as JSON on stdout."
        ),
    ) -> None:
        from sovcli.batch.backends import GenerationSettings
        from sovcli.batch.prompt import PromptTemplate
        from sovcli.batch.runner import BatchJob

        if report_format is not None and report_format not in ("csv", "md", "markdown"):
            raise UsageError(f"unknown --format '{report_format}'", hint="Use csv or md.")
        template = PromptTemplate(_read_prompt(prompt, prompt_file))
        schema_obj = None
        grammar = None
        if schema is not None:
            from sovcli.batch.schema import load_schema

            schema_obj = load_schema(schema)
            if not endpoint and not dry_run:
                from sovcli.engine.grammar import json_schema_to_gbnf

                grammar = json_schema_to_gbnf(schema_obj)
        if not input_dir.is_dir():
            raise UsageError(f"input folder {input_dir} does not exist or is not a folder")
        settings = GenerationSettings(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            schema=schema_obj,
            grammar=grammar,
        )
        model_meta, installed = _model_identity(model, remote=bool(endpoint), dry_run=dry_run)
        job = BatchJob(
            input_dir=input_dir,
            output=output,
            template=template,
            settings=settings,
            model=model_meta,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            context=remote_context if endpoint else ctx,
            parallel=parallel,
            include=tuple(include),
            exclude=tuple(exclude),
            retry_failed=retry_failed,
        )
        if dry_run:
            _dry_run(job, json_output)
            return
        summary = _run(job, installed, endpoint, api_key, remote_context, ctx)
        _print_summary(summary, output, json_output)
        if report_format is not None:
            from sovcli.batch.report import render_report

            sys.stdout.write(render_report(output, report_format))
            sys.stdout.flush()
        if summary.any_failed:
            raise typer.Exit(code=1)

    @app.command("batch-report", help=REPORT_HELP, no_args_is_help=True)
    def _batch_report(
        results: Path = typer.Argument(..., help="A results file written by `sovcli batch`."),
        report_format: str = typer.Option("md", "--format", help="csv or md."),
        output: Path | None = typer.Option(
            None, "-o", "--output", help="Write here instead of stdout."
        ),
    ) -> None:
        from sovcli.batch.report import render_report

        text = render_report(results, report_format)
        if output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        from sovcli.fsutil import atomic_write_text

        atomic_write_text(output, text)
        from sovcli.console import log

        log(f"wrote {output}")


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


def _model_identity(ref: str, *, remote: bool, dry_run: bool) -> tuple[dict[str, Any], Any]:
    """The model part of the resume key, and the InstalledModel for local runs."""
    if remote:
        return {"ref": ref, "remote": True}, None
    from sovcli.store import ensure_model, find_installed

    installed = find_installed(ref) if dry_run else ensure_model(ref)
    if installed is None:  # dry run of a model not pulled yet
        return {"ref": ref}, None
    manifest_sha = getattr(installed, "manifest_sha256", None)
    meta: dict[str, Any] = {"ref": installed.ref, "manifest_sha256": manifest_sha}
    if not manifest_sha:  # a .gguf used in place: its own hash identifies it
        from sovcli.batch.runner import file_sha256

        meta["file_sha256"] = file_sha256(Path(installed.gguf_path))
    return meta, installed


def _dry_run(job: Any, json_output: bool) -> None:
    from sovcli.batch.journal import Journal
    from sovcli.batch.runner import plan
    from sovcli.console import log, print_json

    documents = plan(job, Journal.read_only(job.output))
    if json_output:
        print_json(
            [
                {"path": d.rel, "bytes": d.size, "sha256": d.sha256, "state": d.state}
                for d in documents
            ]
        )
    else:
        for doc in documents:
            sys.stdout.write(f"{doc.state:<7} {doc.size:>12,}  {doc.rel}\n")
        sys.stdout.flush()
    to_do = sum(1 for d in documents if d.state in ("todo", "redo"))
    log(
        f"dry run: {len(documents)} documents, {to_do} to process, "
        f"{len(documents) - to_do} already done"
    )


def _run(
    job: Any,
    installed: Any,
    endpoints: list[str],
    api_key: str | None,
    remote_context: int,
    ctx: int | None,
) -> Any:
    from sovcli.batch.journal import Journal
    from sovcli.batch.runner import BatchRunner, outdated_lines, plan
    from sovcli.console import err_console, log

    engine = None
    with Journal.open(job.output) as journal:
        if journal.repaired_bytes:
            log(
                f"repaired {job.output}: removed a torn last line ({journal.repaired_bytes} bytes) "
                "left by an interrupted run"
            )
        documents = plan(job, journal)
        replaced = journal.remove_lines(outdated_lines(job, journal, documents))
        if replaced:
            log(f"replacing {replaced} outdated record(s) (changed documents or retried failures)")
        to_do = sum(1 for d in documents if d.state in ("todo", "redo"))
        try:
            if to_do == 0:  # nothing to do: load no model, call no server
                backends: list[Any] = [_IdleBackend()]
            elif endpoints:
                backends = _remote_backends(endpoints, job.model["ref"], api_key, remote_context)
            else:
                engine, backends = _local_backend(installed, job.parallel, ctx)
            progress = _Progress(err_console(), len(documents), to_do)
            runner = BatchRunner(job, backends, journal, on_record=progress.update)
            progress.runner = runner
            with progress:
                return runner.run(documents)
        finally:
            if engine is not None:
                engine.close()


def _local_backend(installed: Any, parallel: int, ctx: int | None) -> tuple[Any, list[Any]]:
    from sovcli.batch.backends import LocalBackend
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    engine = Engine(
        EngineConfig(model_path=str(installed.gguf_path), n_parallel=parallel, n_ctx=ctx)
    )
    return engine, [LocalBackend(engine)]


class _IdleBackend:
    """Stands in when every document is already done (no model load)."""

    label = "local"

    def count_tokens(self, text: str) -> int:
        return len(text)

    def text_budget(self, render: Any, max_tokens: int) -> int:
        return 1 << 30

    def complete_many(self, jobs: Any, settings: Any) -> list[Any]:  # pragma: no cover
        raise AssertionError("nothing to run")


def _remote_backends(
    endpoints: list[str], model: str, api_key: str | None, remote_context: int
) -> list[Any]:
    from sovcli.batch.remote import RemoteBackend
    from sovcli.console import log

    backends = []
    problems = []
    for url in endpoints:
        backend = RemoteBackend(url, model, api_key=api_key, context_tokens=remote_context)
        try:
            listed = backend.check()
        except NetworkError as exc:
            problems.append(exc)
            log(f"warning: {exc.message}; not using it")
            continue
        if listed and model not in listed:
            log(f"note: {backend.base} lists {', '.join(listed[:5])}; asking it for '{model}'")
        backends.append(backend)
    if not backends:
        first = problems[0]
        raise NetworkError(
            first.message, hint="Start the servers (sovcli serve) or fix --endpoint."
        )
    return backends


class _Progress:
    """Rich progress on stderr: documents, tokens/s, ETA, failures."""

    def __init__(self, console: Any, total: int, to_do: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.runner: Any = None
        self.enabled = to_do > 0 and os.environ.get("SOVCLI_NO_PROGRESS", "") in ("", "0")
        self.progress = Progress(
            TextColumn("[bold]batch[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task("batch", total=to_do, tps="0.0", failed=0)

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, record: dict[str, Any]) -> None:
        summary = self.runner.summary if self.runner is not None else None
        tps = "0.0"
        failed = 0
        if summary is not None:
            elapsed = max(self.progress.tasks[0].elapsed or 0.0, 1e-6)
            tps = f"{summary.completion_tokens / elapsed:.1f}"
            failed = summary.failed
        self.progress.update(self.task, advance=1, tps=tps, failed=failed)


def _print_summary(summary: Any, output: Path, json_output: bool) -> None:
    from sovcli.console import err_console, print_json

    console = err_console()
    rate = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
    failed_total = summary.failed + summary.failed_before
    console.print(
        f"{summary.total} documents: {summary.ok + summary.skipped - summary.failed_before} ok, "
        f"{failed_total} failed, {summary.skipped} already done; "
        f"{summary.completion_tokens:,} tokens generated in {summary.seconds:.1f} s "
        f"({rate:.1f} tok/s) -> {output}",
        markup=False,
        highlight=False,
    )
    if summary.not_processed:
        console.print(
            f"{summary.not_processed} documents not processed: re-run the same command to resume",
            markup=False,
        )
    for path, error in summary.failures[:20]:
        console.print(f"  failed: {path}: {error}", markup=False, highlight=False)
    if len(summary.failures) > 20:
        console.print(f"  ... and {len(summary.failures) - 20} more (see {output})", markup=False)
    if json_output:
        print_json(summary.as_dict())
