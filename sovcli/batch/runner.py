"""The batch job: find documents, decide what is already done, process the rest in parallel.

Each worker thread takes a document from a shared queue, extracts its text, splits it into
chunks when it does not fit the context, runs the prompt on every chunk (submitted together,
so the engine's continuous batching decodes them alongside the other workers' requests),
combines the answers (map-reduce for text, a key-by-key merge for `--schema` JSON) and
appends exactly one record to the journal. Library code: no printing; progress goes to the
`on_record` callback.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sovcli import __version__
from sovcli.batch.backends import (
    Backend,
    BackendFailure,
    Completion,
    GenerationSettings,
    PromptJob,
)
from sovcli.batch.chunk import chunk_text
from sovcli.batch.extract import ExtractionError
from sovcli.batch.isolate import ExtractOptions, extract_isolated
from sovcli.batch.journal import Journal, RecordKey, path_fields, record_key, safe_text
from sovcli.batch.prompt import PromptTemplate, combine_prompt
from sovcli.batch.schema import merge_values, parse_output, schema_sha256, validate
from sovcli.batch.walk import Found, discover
from sovcli.errors import NetworkError, StoreError, UsageError
from sovcli.store.hashing import sha256_file

METHOD_VERSION = "batch-v1"  # bump when chunking/combining changes what a record means
MIN_CHUNK_TOKENS = 64
MAX_COMBINE_ROUNDS = 4


@dataclass(frozen=True)
class BatchJob:
    """Everything that defines a run (and, through `params`, its resume key)."""

    input_dir: Path
    output: Path
    template: PromptTemplate
    settings: GenerationSettings
    model: dict[str, Any]  # {"ref", "manifest_sha256", "file_sha256"} or {"ref", "remote"}
    chunk_tokens: int | None = None  # None: as large as the context allows
    chunk_overlap: int = 64
    context: int | None = None  # per-sequence context used (part of the key)
    parallel: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    retry_failed: bool = False
    follow_symlinks: bool = False  # read links that point outside input_dir
    extract: ExtractOptions = field(default_factory=ExtractOptions)  # limits, encoding

    @property
    def params(self) -> dict[str, Any]:
        """The parameters recorded with every result; changing one redoes the documents."""
        s = self.settings
        return {
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "seed": s.seed,
            "schema_sha256": schema_sha256(s.schema) if s.schema is not None else None,
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "context": self.context,
            "method": METHOD_VERSION,
        }

    @property
    def params_sha256(self) -> str:
        """The identity of `params`."""
        canonical = json.dumps(self.params, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Document:
    """One input file and what the journal says about it."""

    path: Path
    rel: str  # POSIX path relative to the input folder, exact (surrogateescape'd bytes)
    size: int
    sha256: str | None
    read_error: str | None
    key: RecordKey
    state: str = "todo"  # todo | done | redo (changed or retried) | failed (done, with error)
    attempts: int = 0

    @property
    def display(self) -> str:
        """The path as shown to people and in records (bytes that are not UTF-8 as \\xNN)."""
        return safe_text(self.rel)


@dataclass
class Summary:
    """What a run did."""

    total: int = 0
    skipped: int = 0  # already in the journal
    processed: int = 0
    ok: int = 0
    failed: int = 0  # failed in this run
    failed_before: int = 0  # skipped, but their record is an error
    not_processed: int = 0  # left for the next run (interrupted, all endpoints down)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def any_failed(self) -> bool:
        """Whether the exit code should say so."""
        return bool(self.failed or self.failed_before or self.not_processed)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "documents": self.total,
            "skipped": self.skipped,
            "processed": self.processed,
            "ok": self.ok,
            "failed": self.failed,
            "failed_before": self.failed_before,
            "not_processed": self.not_processed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
            "completion_tokens_per_s": round(self.completion_tokens / self.seconds, 2)
            if self.seconds > 0
            else 0.0,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


# --- planning -----------------------------------------------------------------------------


def documents_of(job: BatchJob) -> list[Found]:
    """What `discover` finds for this job (the results file itself left out)."""
    return discover(
        job.input_dir, job.include, job.exclude, skip=(job.output,),
        follow_symlinks=job.follow_symlinks,
    )  # fmt: skip


def plan(job: BatchJob, journal: Journal) -> list[Document]:
    """Every input document with its key and whether the journal already has it."""
    documents = []
    for found in documents_of(job):
        path, rel = found.path, found.rel
        sha, error = None, found.refused
        size = 0
        if error is None:  # a refused entry is never opened, not even to hash it
            try:
                size = path.stat().st_size
                sha = sha256_file(path)
            except OSError as exc:
                error = f"cannot read file: {exc.strerror or exc}"
        record = {
            "path": rel,
            "sha256": sha,
            "model": job.model,
            "prompt_sha256": job.template.sha256,
            "params_sha256": job.params_sha256,
        }
        doc = Document(path, rel, size, sha, error, record_key(record))
        existing = journal.lookup(doc.key)
        if existing is not None and not existing.retryable:
            if existing.status == "ok" or not job.retry_failed:
                doc.state = "done" if existing.status == "ok" else "failed"
            else:
                doc.state = "redo"
        elif journal.outdated_for(doc.key) is not None:
            doc.state = "redo"
        documents.append(doc)
    return documents


def outdated_lines(job: BatchJob, journal: Journal, documents: list[Document]) -> set[int]:
    """Journal lines that this run replaces, so the file holds one record per document.

    A document kept as it is (done, or failed for good) keeps its matching record; every other
    record of its path goes: an older input, model, prompt or parameter, a failure retried,
    and any duplicate an older sovcli left behind.
    """
    lines: set[int] = set()
    for doc in documents:
        kept = journal.lookup(doc.key) if doc.state in ("done", "failed") else None
        for record in journal.records_for(doc.rel):
            if kept is None or record.line_no != kept.line_no:
                lines.add(record.line_no)
    return lines


# --- running ------------------------------------------------------------------------------


class BatchRunner:
    """Runs the planned documents on the backends, appending one journal record each."""

    def __init__(
        self,
        job: BatchJob,
        backends: list[Backend],
        journal: Journal,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not backends:
            raise UsageError("no backend to run on")
        self.job = job
        self.backends = backends
        self.journal = journal
        self.on_record = on_record
        self.summary = Summary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: queue.Queue[Document] = queue.Queue()
        self._pending = 0
        self._abort: Exception | None = None

    # --- checks -------------------------------------------------------------------------

    def check_budget(self) -> int:
        """The chunk size in tokens; UsageError when --max-tokens leaves no room for text."""
        backend = self.backends[0]
        render = self._render_for("document-name.pdf", "document-name.pdf")
        budget = backend.text_budget(render, self.job.settings.max_tokens)
        if budget < MIN_CHUNK_TOKENS:
            raise UsageError(
                f"--max-tokens {self.job.settings.max_tokens} leaves {max(budget, 0)} tokens of "
                "context for the document",
                hint="Lower --max-tokens, shorten the prompt, or raise --ctx.",
            )
        if self.job.chunk_tokens is not None:
            budget = min(budget, self.job.chunk_tokens)
        return budget

    def _render_for(self, name: str, rel: str) -> Callable[[str], str]:
        template = self.job.template

        def render(text: str) -> str:
            return template.render(text=text, name=name, path=rel)

        return render

    # --- the run ------------------------------------------------------------------------

    def run(self, documents: list[Document]) -> Summary:
        """Process every document whose state is todo/redo; returns the summary."""
        self.check_budget()
        summary = self.summary
        summary.total = len(documents)
        started = time.monotonic()
        todo = [d for d in documents if d.state in ("todo", "redo")]
        for doc in documents:
            if doc.state in ("done", "failed"):
                summary.skipped += 1
                if doc.state == "failed":
                    summary.failed_before += 1
                    summary.failures.append((doc.display, "failed in an earlier run"))
        for doc in todo:
            self._queue.put(doc)
        self._pending = len(todo)
        threads = []
        for backend in self.backends:
            for i in range(max(1, self.job.parallel)):
                thread = threading.Thread(
                    target=self._worker, args=(backend,), name=f"batch-{backend.label}-{i}",
                    daemon=True,
                )  # fmt: skip
                thread.start()
                threads.append(thread)
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.2)
        except KeyboardInterrupt:
            self._stop.set()
            raise
        finally:
            summary.seconds = time.monotonic() - started
        summary.not_processed = max(0, self._pending)
        if self._abort is not None:
            raise self._stopped_by(self._abort, len(todo))
        return summary

    def _stopped_by(self, error: BaseException, todo: int) -> BaseException:
        """The error that stopped the run, saying how far it got (a store error: resumable)."""
        if isinstance(error, StoreError):
            done = f"{self.summary.processed} of {todo} documents recorded"
            return type(error)(f"{error.message} ({done})", hint=error.hint)
        return error

    def stop(self) -> None:
        """Ask the workers to stop after their current document (nothing is half-written)."""
        self._stop.set()

    def _worker(self, backend: Backend) -> None:
        """A worker thread: it never dies silently, whatever fails stops the run cleanly."""
        try:
            self._work(backend)
        except BaseException as exc:  # a full disk, or a bug: stop every worker and say why
            with self._lock:
                if self._abort is None:
                    self._abort = exc
                self._stop.set()

    def _work(self, backend: Backend) -> None:
        while not self._stop.is_set():
            if getattr(backend, "dead", False):
                return
            try:
                doc = self._queue.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self._pending <= 0:
                        return
                if all(getattr(b, "dead", False) for b in self.backends):
                    return
                continue
            try:
                record = self.process(doc, backend)
            except BackendFailure as failure:  # the endpoint went away: hand the doc on
                if self._hand_over(doc, backend, failure):
                    return
                continue
            except Exception as exc:  # never lose a document to a bug: record it
                record = self._error_record(doc, "internal", f"{type(exc).__name__}: {exc}", 0.0)
            if self._stop.is_set() and record.get("status") != "ok":
                return  # interrupted: leave it for the next run rather than record a failure
            self._write(doc, record)

    def _hand_over(self, doc: Document, backend: Backend, failure: BackendFailure) -> bool:
        """A network failure: retire the endpoint and requeue the document elsewhere.

        Returns True when this worker should exit.
        """
        with self._lock:
            backend.dead = True  # type: ignore[attr-defined]
            alive = [b for b in self.backends if not getattr(b, "dead", False)]
            if alive:
                doc.attempts += 1
                self._queue.put(doc)
                return True
            if self._abort is None:
                self._abort = NetworkError(
                    f"every endpoint failed ({failure.message})",
                    hint="Nothing was lost: re-run the same command to process the rest.",
                )
            self._stop.set()
            return True

    def _write(self, doc: Document, record: dict[str, Any]) -> None:
        """Append the record (a store error propagates and stops the run: nothing half-written)."""
        with self._lock:
            if self.journal.closed or isinstance(self._abort, StoreError):  # cannot write
                return
            try:
                self.journal.append(record)
            except (ValueError, TypeError, RecursionError) as exc:  # cannot be encoded: say so
                message = f"the result could not be stored: {type(exc).__name__}"
                record = self._error_record(
                    doc, "internal", message, 0.0, str(record.get("backend", ""))
                )
                self.journal.append(record)
            self._pending -= 1
            summary = self.summary
            summary.processed += 1
            tokens = record.get("tokens") or {}
            summary.prompt_tokens += int(tokens.get("prompt") or 0)
            summary.completion_tokens += int(tokens.get("completion") or 0)
            if record["status"] == "ok":
                summary.ok += 1
            else:
                summary.failed += 1
                summary.failures.append((doc.display, safe_text(str(record.get("error")))))
        if self.on_record is not None:
            self.on_record(record)

    # --- one document -------------------------------------------------------------------

    def _base_record(
        self, doc: Document, backend_label: str, started_at: str | None = None
    ) -> dict[str, Any]:
        return {
            **path_fields(doc.rel),
            "sha256": doc.sha256,
            "bytes": doc.size,
            "model": self.job.model,
            "prompt_sha256": self.job.template.sha256,
            "params": self.job.params,
            "params_sha256": self.job.params_sha256,
            "backend": backend_label,
            "started_at": started_at or _now(),
            "sovcli": __version__,
        }

    def _error_record(
        self,
        doc: Document,
        kind: str,
        message: str,
        seconds: float,
        backend: str = "",
        started_at: str | None = None,
    ) -> dict[str, Any]:
        record = self._base_record(doc, backend, started_at)
        record.update(
            status="error",
            error=message,
            error_kind=kind,
            output=None,
            chunks=0,
            tokens={"prompt": 0, "completion": 0},
            seconds=round(seconds, 3),
            finished_at=_now(),
        )
        return record

    def process(self, doc: Document, backend: Backend) -> dict[str, Any]:
        """Run the job on one document; returns its record (raises BackendFailure 'network')."""
        started = time.monotonic()
        started_at = _now()

        def failed(kind: str, message: str) -> dict[str, Any]:
            seconds = time.monotonic() - started
            return self._error_record(doc, kind, message, seconds, backend.label, started_at)

        if doc.read_error:
            return failed("input", doc.read_error)
        try:
            text = extract_isolated(doc.path, self.job.extract)
        except ExtractionError as exc:
            return failed("input", str(exc))
        if self._stop.is_set():
            return failed("interrupted", "interrupted")
        text = safe_text(text)  # a lone surrogate cannot reach the tokenizer or the wire
        name = safe_text(doc.path.name)
        render = self._render_for(name, doc.display)
        settings = self.job.settings
        budget = backend.text_budget(render, settings.max_tokens)
        if self.job.chunk_tokens is not None:
            budget = min(budget, self.job.chunk_tokens)
        if budget < MIN_CHUNK_TOKENS:
            return failed("input", "the prompt leaves no room for the document in the context")
        chunks = chunk_text(text, budget, backend.count_tokens, self.job.chunk_overlap)
        completions: list[Completion] = []
        try:
            answers = backend.complete_many([PromptJob(render, c) for c in chunks], settings)
            completions.extend(answers)
            if settings.schema is not None:
                output, problem = self._merge_json(answers, settings)
                if problem:
                    record = failed("output", problem)
                    record["output_text"] = [a.text for a in answers]
                    _add_usage(record, completions, len(chunks))
                    return record
            elif len(answers) == 1:
                output = answers[0].text.strip()
            else:
                output = self._combine(backend, name, doc.display, answers, completions)
        except BackendFailure as failure:
            if failure.kind == "network":
                raise
            return failed(failure.kind, failure.message)
        record = self._base_record(doc, backend.label, started_at)
        record.update(status="ok", error=None, error_kind=None, output=output)
        if settings.schema is not None:
            record["valid"] = True
        _add_usage(record, completions, len(chunks))
        record["finish_reason"] = completions[-1].finish_reason
        record["seconds"] = round(time.monotonic() - started, 3)
        record["finished_at"] = _now()
        return record

    def _merge_json(
        self, answers: list[Completion], settings: GenerationSettings
    ) -> tuple[Any, str | None]:
        values = []
        for i, answer in enumerate(answers):
            try:
                values.append(parse_output(answer.text))
            except ValueError:
                where = f" (chunk {i + 1})" if len(answers) > 1 else ""
                cut = " cut off at --max-tokens" if answer.finish_reason == "length" else ""
                return None, f"output is not valid JSON{where}:{cut or ' unparseable'}"
        merged = merge_values(values) if len(values) > 1 else values[0]
        problem = validate(merged, settings.schema or {})
        if problem:
            return None, f"output does not match the schema: {problem}"
        return merged, None

    def _combine(
        self,
        backend: Backend,
        name: str,
        rel: str,
        answers: list[Completion],
        completions: list[Completion],
    ) -> str:
        """Map-reduce: merge partial answers, in several rounds when they do not fit at once."""
        settings = self.job.settings
        texts = [a.text.strip() for a in answers]
        for _round in range(MAX_COMBINE_ROUNDS):
            parts = "\n\n".join(f"[Part {i + 1}]\n{t}" for i, t in enumerate(texts))

            def render(t: str) -> str:
                return combine_prompt(self.job.template, name=name, path=rel, parts=t)

            budget = backend.text_budget(render, settings.max_tokens)
            groups = chunk_text(parts, max(budget, MIN_CHUNK_TOKENS), backend.count_tokens, 0)
            results = backend.complete_many([PromptJob(render, g) for g in groups], settings)
            completions.extend(results)
            texts = [r.text.strip() for r in results]
            if len(texts) == 1:
                return texts[0]
        return "\n\n".join(texts)


def _add_usage(record: dict[str, Any], completions: list[Completion], chunks: int) -> None:
    record["chunks"] = chunks
    record["calls"] = len(completions)
    record["tokens"] = {
        "prompt": sum(c.prompt_tokens for c in completions),
        "completion": sum(c.completion_tokens for c in completions),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
