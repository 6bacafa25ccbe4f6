"""The batch job: find documents, decide what is already done, process the rest in parallel.

Extraction threads take documents (smallest first), extract their text and split it into
chunks when it does not fit the context. Slot threads, one per sequence the engine decodes
together, send one call at a time, the document chosen by fair share (`sovcli.batch.sched`),
so small documents are never stuck behind a long one. The answers of a long document are
saved one by one as they arrive (`sovcli.batch.chunklog`) and combined at the end (map-reduce
for text, a key-by-key merge for `--schema` JSON); then exactly one record is appended to
the journal. An answer cut at --max-tokens makes the status "truncated". Library code: no
printing; progress goes to the `on_record` callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli import __version__, settings
from sovcli.batch.backends import (
    Backend,
    BackendFailure,
    Completion,
    GenerationSettings,
    PromptJob,
    trim_cut,
)
from sovcli.batch.chunk import chunk_text
from sovcli.batch.chunklog import ChunkLog, doc_id
from sovcli.batch.extract import ExtractionError
from sovcli.batch.isolate import ExtractOptions, extract_isolated_document
from sovcli.batch.journal import Journal, RecordKey, path_fields, record_key, safe_text
from sovcli.batch.prompt import PromptTemplate, combine_prompt
from sovcli.batch.sched import WAIT_S, Scheduler
from sovcli.batch.schema import merge_values, parse_output, schema_sha256, validate
from sovcli.batch.walk import Found, discover
from sovcli.batch.work import DocWork, now_iso
from sovcli.engine.reproducible import default_reproducible
from sovcli.errors import NetworkError, StoreError, UsageError
from sovcli.governance.audit import audit_batch_record, require_trail
from sovcli.store.hashing import sha256_file

METHOD_VERSION = "batch-v1"  # bump when chunking/combining changes what a record means
MIN_CHUNK_TOKENS = 64
MAX_COMBINE_ROUNDS = 4
MAX_EXTRACT_THREADS = 4  # documents extracted at once (the extractor pool has its own cap)
RETRY_CHOICES = ("truncated", "failed", "error", "needs_ocr")


def default_speculative() -> str:
    """`SOVCLI_SPEC` (auto unless set to off): what an engine does when not told."""
    return settings.get("SOVCLI_SPEC") or "auto"


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
    retry: frozenset[str] = frozenset()  # --retry: redo the documents with these outcomes only
    follow_symlinks: bool = False  # read links that point outside input_dir
    extract: ExtractOptions = field(default_factory=ExtractOptions)  # limits, encoding
    # Batch-invariant decoding (EngineConfig.reproducible; SOVCLI_REPRODUCIBLE), recorded.
    reproducible: bool = field(default_factory=default_reproducible)
    # Speculative decoding (EngineConfig.speculative; SOVCLI_SPEC; None: an endpoint's own),
    # recorded but no part of the key: the answers are the same with it on or off.
    speculative: str | None = field(default_factory=default_speculative)
    draft_max: int | None = None  # most drafted tokens per step (None: the engine's default)
    draft_model: dict[str, Any] | None = None  # --draft: {"ref", "manifest_sha256" | ...}

    @property
    def replay_fields(self) -> dict[str, Any]:
        """What `audit replay` needs beyond the key to redo a record (batch/replay.py)."""
        return {
            "input": str(self.folder.absolute()),
            "prompt": self.template.source,
            "schema": self.settings.schema,
            "encoding": self.extract.encoding,
            "ocr": self.extract.ocr,
            "ocr_lang": self.extract.ocr_lang,
        }

    @property
    def folder(self) -> Path:
        """The folder that record paths are relative to (the parent of a single file)."""
        return self.input_dir.parent if self.input_dir.is_file() else self.input_dir

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
    kept_line: int | None = None  # the journal line kept for it (--retry keeps other params)

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
    truncated: int = 0  # answered, but cut at --max-tokens (status "truncated")
    failed: int = 0  # failed in this run
    failed_before: int = 0  # skipped, but their record is an error
    not_processed: int = 0  # left for the next run (interrupted, all endpoints down)
    requeued: int = 0  # documents sent again after their Ray node died
    prompt_tokens: int = 0
    completion_tokens: int = 0
    drafted_tokens: int = 0  # speculative decoding: tokens proposed (local engine)
    accepted_tokens: int = 0  # of those, confirmed by the model
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
            "truncated": self.truncated,
            "failed": self.failed,
            "failed_before": self.failed_before,
            "not_processed": self.not_processed,
            "requeued": self.requeued,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "seconds": round(self.seconds, 3),
            "completion_tokens_per_s": round(self.completion_tokens / self.seconds, 2)
            if self.seconds > 0
            else 0.0,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


# --- planning -----------------------------------------------------------------------------


def documents_of(job: BatchJob) -> list[Found]:
    """What `discover` finds for this job (the results file itself left out); a single file
    given as the input is the one document, named by its file name."""
    source = job.input_dir
    if source.is_file():
        if source.resolve() == job.output.resolve():
            raise UsageError(
                f"{source} is the results file", hint="Give the document, or another -o file."
            )
        return [Found(source, source.name)]
    if source.exists() and not source.is_dir():
        raise UsageError(f"{source} is not a regular file or a folder")
    return discover(
        job.input_dir, job.include, job.exclude, skip=(job.output,),
        follow_symlinks=job.follow_symlinks,
    )  # fmt: skip


def outcome_of(status: str) -> str:
    """The --retry word for a record's status: ok, truncated or failed."""
    return status if status in ("ok", "truncated") else "failed"


def _retried(job: BatchJob, status: str) -> bool:
    return status in job.retry or outcome_of(status) in job.retry


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
        doc.state = _state(job, journal, doc)
        documents.append(doc)
    return documents


def _state(job: BatchJob, journal: Journal, doc: Document) -> str:
    """todo, done, failed (done, kept) or redo, from what the journal holds for `doc`."""
    if job.retry:
        return _retry_state(job, journal, doc)
    existing = journal.lookup(doc.key)
    if existing is not None and not existing.retryable:
        if outcome_of(existing.status) != "failed" or not job.retry_failed:
            return "failed" if outcome_of(existing.status) == "failed" else "done"
        return "redo"
    if journal.outdated_for(doc.key) is not None:
        return "redo"
    return "todo"


def _retry_state(job: BatchJob, journal: Journal, doc: Document) -> str:
    """--retry: the latest record of the same document, model and prompt is kept (whatever
    its parameters) unless its outcome is one to retry; the retried get this run's."""
    records = journal.records_for(doc.rel)
    same = [r for r in records if r.key is not None and r.key[:4] == doc.key[:4]]
    if not same:
        return "redo" if records else "todo"
    latest = same[-1]
    if _retried(job, latest.status) or latest.retryable:
        return "redo"
    doc.kept_line = latest.line_no
    return "done" if outcome_of(latest.status) != "failed" else "failed"


def outdated_lines(job: BatchJob, journal: Journal, documents: list[Document]) -> set[int]:
    """Journal lines that this run replaces, so the file holds one record per document.

    A document kept as it is (done, or failed for good) keeps its matching record; every other
    record of its path goes: an older input, model, prompt or parameter, a failure retried,
    and any duplicate an older sovcli left behind.
    """
    lines: set[int] = set()
    for doc in documents:
        kept: int | None = None
        if doc.state in ("done", "failed"):
            found = journal.lookup(doc.key)
            kept = doc.kept_line
            if kept is None and found is not None:
                kept = found.line_no
        for record in journal.records_for(doc.rel):
            if kept is None or record.line_no != kept:
                lines.add(record.line_no)
    return lines


# --- running ------------------------------------------------------------------------------


class BatchRunner:
    """Runs the planned documents on the backends, appending one journal record each.

    Extraction threads admit documents (smallest first) and chunk them; slot threads, one
    per sequence of each backend, send one call at a time, chosen by `Scheduler`; answers of
    long documents go to the `chunklog` as they arrive, so an interrupted run keeps them.
    """

    def __init__(
        self,
        job: BatchJob,
        backends: list[Backend],
        journal: Journal,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        chunklog: ChunkLog | None = None,
    ) -> None:
        if not backends:
            raise UsageError("no backend to run on")
        self.job = job
        self.backends = backends
        self.journal = journal
        self.on_record = on_record
        self.chunklog = chunklog
        self.summary = Summary()
        self.finished_ids: set[str] = set()  # doc_id of every document recorded by this run
        self.kept_chunks = 0  # answers saved for documents left unfinished (after a stop)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending = 0
        self._abort: BaseException | None = None
        self._sched: Scheduler | None = None
        self._seq = itertools.count()

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
        started = time.monotonic()
        todo = self.begin(documents)
        slots = [(b, i) for b in self.backends for i in range(max(1, self.job.parallel))]
        self._sched = Scheduler(todo, lookahead=len(slots) + 1, stop=self._stop)
        threads = [self._thread(self._slot, b, f"batch-{b.label}-{i}") for b, i in slots]
        for i in range(min(len(slots), MAX_EXTRACT_THREADS, max(1, len(todo)))):
            threads.append(self._thread(self._extractor, None, f"batch-extract-{i}"))
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=WAIT_S)
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            summary.seconds = time.monotonic() - started
        summary.not_processed = max(0, self._pending)
        self.kept_chunks = self._saved_for_unfinished()
        if self._abort is not None:
            raise self._stopped_by(self._abort, len(todo))
        return summary

    def begin(self, documents: list[Document]) -> list[Document]:
        """Count the documents kept from earlier runs; the ones to process, smallest first.

        Fails closed first: no document runs unless its audit record can be written."""
        require_trail()
        summary = self.summary
        summary.total = len(documents)
        todo = [d for d in documents if d.state in ("todo", "redo")]
        for doc in documents:
            if doc.state in ("done", "failed"):
                summary.skipped += 1
                if doc.state == "failed":
                    summary.failed_before += 1
                    summary.failures.append((doc.display, "failed in an earlier run"))
        self._pending = len(todo)
        return sorted(todo, key=lambda d: (d.size, d.rel))

    def _thread(self, target: Callable[..., None], arg: Any, name: str) -> threading.Thread:
        """A daemon thread that never dies silently: whatever it raises stops the run."""

        def guarded() -> None:
            try:
                target(arg) if arg is not None else target()
            except BaseException as exc:  # a full disk, or a bug: stop every thread, say why
                with self._lock:
                    if self._abort is None:
                        self._abort = exc
                self.stop()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _interrupt(self) -> None:
        """Ctrl-C: stop handing out calls, cancel the ones running (their answers are lost,
        the answers saved before are kept for the next run)."""
        self.stop()
        for backend in self.backends:
            cancel = getattr(backend, "cancel_all", None)
            if cancel is not None:
                with contextlib.suppress(Exception):
                    cancel()
        self.summary.not_processed = max(0, self._pending)
        self.kept_chunks = self._saved_for_unfinished()

    def _saved_for_unfinished(self) -> int:
        """Answers kept for the next run: saved for documents this run did not record."""
        if self.chunklog is None:
            return 0
        return self.chunklog.count_except(self.finished_ids)

    def _stopped_by(self, error: BaseException, todo: int) -> BaseException:
        """The error that stopped the run, saying how far it got (a store error: resumable)."""
        if isinstance(error, StoreError):
            done = f"{self.summary.processed} of {todo} documents recorded"
            return type(error)(f"{error.message} ({done})", hint=error.hint)
        return error

    def stop(self) -> None:
        """Ask every thread to stop (nothing is half-written; saved answers are kept)."""
        self._stop.set()
        if self._sched is not None:
            self._sched.wake()

    # --- threads ------------------------------------------------------------------------

    def _extractor(self) -> None:
        """Admit documents: extract and chunk them, or record why they cannot be read."""
        assert self._sched is not None
        backend = self.backends[0]  # chunks are sized for it (every backend is alike)
        while (doc := self._sched.next_document()) is not None:
            prepared: DocWork | dict[str, Any] | None = None
            try:
                prepared = self._prepare(doc, backend)
                if isinstance(prepared, DocWork) and prepared.stage_done:
                    prepared = self._advance(prepared, backend)  # all saved by an earlier run
            except Exception as exc:  # never lose a document to a bug: record it
                message = f"{type(exc).__name__}: {exc}"
                prepared = self._error_record(doc, "internal", message, 0.0, backend.label)
            finally:
                self._sched.admitted(prepared if isinstance(prepared, DocWork) else None)
            if isinstance(prepared, dict):
                self._record(doc, prepared, None)

    def _slot(self, backend: Backend) -> None:
        """One sequence of `backend`: send a call, store the answer, move the document on."""
        assert self._sched is not None
        sched = self._sched
        settings = self.job.settings

        def usable() -> bool:
            return not getattr(backend, "dead", False)

        while (picked := sched.next_call(usable)) is not None:
            work, index = picked
            job = work.jobs[index]
            try:
                completion = trim_cut(backend.complete_many([job], settings)[0])
            except BackendFailure as failure:
                if failure.kind == "network":  # the endpoint went away: hand the call on
                    sched.give_back(work, index)
                    self._hand_over(backend, failure)
                    return
                self._call_failed(work, failure.kind, failure.message, backend.label)
                continue
            except Exception as exc:  # never lose a document to a bug: record it
                self._call_failed(work, "internal", f"{type(exc).__name__}: {exc}", backend.label)
                continue
            if work.saves and self.chunklog is not None:
                self.chunklog.save(work.doc_id, work.step_of(index), completion)
            if sched.answered(work, index, completion):
                moved = self._advance(work, backend)
                if isinstance(moved, dict):
                    self._record(work.doc, moved, work)
                else:
                    sched.staged(work)

    def _call_failed(self, work: DocWork, kind: str, message: str, label: str) -> None:
        assert self._sched is not None
        if self._sched.failed_call(work) and not self._stop.is_set():
            seconds = time.monotonic() - work.started
            record = self._error_record(work.doc, kind, message, seconds, label, work.started_at)
            self._record(work.doc, record, work)

    def _hand_over(self, backend: Backend, failure: BackendFailure) -> None:
        """A network failure: retire the endpoint; stop the run when none is left."""
        with self._lock:
            backend.dead = True  # type: ignore[attr-defined]
            if any(not getattr(b, "dead", False) for b in self.backends):
                return
            if self._abort is None:
                self._abort = NetworkError(
                    f"every endpoint failed ({failure.message})",
                    hint="Nothing was lost: re-run the same command to process the rest.",
                )
        self.stop()

    def _record(self, doc: Document, record: dict[str, Any], work: DocWork | None) -> None:
        """Write a finished document's record (not a failure caused by the stop itself)."""
        assert self._sched is not None
        if self._stop.is_set() and record.get("status") not in ("ok", "truncated"):
            return  # interrupted: left for the next run rather than recorded as a failure
        self._write(doc, record)
        self._sched.finished(work)

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
            audit_batch_record(record, journal=self.job.output)  # AuditError stops the run
            self.finished_ids.add(doc_id(doc.key))
            self._pending -= 1
            self._count(doc, record)
        if self.on_record is not None:
            self.on_record(record)

    def _count(self, doc: Document, record: dict[str, Any]) -> None:
        summary = self.summary
        summary.processed += 1
        tokens = record.get("tokens") or {}
        summary.prompt_tokens += int(tokens.get("prompt") or 0)
        summary.completion_tokens += int(tokens.get("completion") or 0)
        if record["status"] == "ok":
            summary.ok += 1
        elif record["status"] == "truncated":
            summary.truncated += 1
        else:
            summary.failed += 1
            summary.failures.append((doc.display, safe_text(str(record.get("error")))))

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
            "reproducible": self.job.reproducible,
            "speculative": self.job.speculative,
            **({"draft_model": self.job.draft_model} if self.job.draft_model else {}),
            "replay": self.job.replay_fields,
            "started_at": started_at or now_iso(),
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
            finished_at=now_iso(),
        )
        return record

    def _prepare(self, doc: Document, backend: Backend) -> DocWork | dict[str, Any]:
        """Extract and chunk `doc`: its work (answers saved earlier filled in), or the error
        record of a document that cannot be read."""
        started = time.monotonic()
        started_at = now_iso()

        def failed(kind: str, message: str) -> dict[str, Any]:
            seconds = time.monotonic() - started
            return self._error_record(doc, kind, message, seconds, backend.label, started_at)

        if doc.read_error:
            return failed("input", doc.read_error)
        try:
            extracted = extract_isolated_document(doc.path, self.job.extract)
        except ExtractionError as exc:
            record = failed("input", str(exc))
            record["status"] = exc.status  # "needs_ocr" for a scan that cannot be OCR'd here
            return record
        if self._stop.is_set():
            return failed("interrupted", "interrupted")
        text = safe_text(extracted.text)  # a lone surrogate cannot reach the tokenizer or wire
        name = safe_text(doc.path.name)
        render = self._render_for(name, doc.display)
        budget = backend.text_budget(render, self.job.settings.max_tokens)
        if self.job.chunk_tokens is not None:
            budget = min(budget, self.job.chunk_tokens)
        if budget < MIN_CHUNK_TOKENS:
            return failed("input", "the prompt leaves no room for the document in the context")
        chunks = chunk_text(text, budget, backend.count_tokens, self.job.chunk_overlap)
        work = DocWork(
            doc, next(self._seq), doc_id(doc.key), name, extracted, chunks=len(chunks),
            started=started, started_at=started_at,
        )  # fmt: skip
        work.begin([PromptJob(render, c) for c in chunks], self._saved_for(work))
        return work

    def _saved_for(self, work: DocWork) -> Callable[[str], Completion | None]:
        log = self.chunklog

        def saved(step: str) -> Completion | None:
            return log.get(work.doc_id, step) if log is not None else None

        return saved

    def _advance(self, work: DocWork, backend: Backend) -> DocWork | dict[str, Any]:
        """A stage is answered: start the next one (combining answers), or the final record."""
        answers = work.answers()
        settings = self.job.settings
        if settings.schema is not None:
            output, problem = self._merge_json(answers, settings)
            return self._final_record(work, backend.label, output, problem)
        texts = [a.text.strip() for a in answers]
        if len(texts) == 1:
            return self._final_record(work, backend.label, texts[0], None)
        if work.stage >= MAX_COMBINE_ROUNDS:
            return self._final_record(work, backend.label, "\n\n".join(texts), None)
        parts = "\n\n".join(f"[Part {i + 1}]\n{t}" for i, t in enumerate(texts))
        template, name, rel = self.job.template, work.name, work.doc.display

        def render(t: str) -> str:
            return combine_prompt(template, name=name, path=rel, parts=t)

        budget = backend.text_budget(render, settings.max_tokens)
        groups = chunk_text(parts, max(budget, MIN_CHUNK_TOKENS), backend.count_tokens, 0)
        work.stage += 1
        work.begin([PromptJob(render, g) for g in groups], self._saved_for(work))
        if work.stage_done:  # the whole stage was saved by an earlier run
            return self._advance(work, backend)
        return work

    def _final_record(
        self, work: DocWork, label: str, output: Any, problem: str | None
    ) -> dict[str, Any]:
        """The record of a document whose calls are all answered."""
        completions = work.completions
        cut = any(c.finish_reason == "length" for c in completions)
        record = self._base_record(work.doc, label, work.started_at)
        if problem:
            record.update(status="truncated" if cut else "error", error=problem)
            record.update(error_kind="output", output=None)
            record["output_text"] = [c.text for c in completions]
        else:
            status = "truncated" if cut else "ok"
            record.update(status=status, error=None, error_kind=None, output=output)
            record.update(work.extracted.record_fields())  # ocr_pages, ocr_engine, ocr_lang
            if self.job.settings.schema is not None:
                record["valid"] = True
        record["chunks"] = work.chunks
        record["chunks_resumed"] = work.reused
        record["calls"] = len(completions)
        record["tokens"] = {
            "prompt": sum(c.prompt_tokens for c in completions),
            "completion": sum(c.completion_tokens for c in completions),
        }
        record["finish_reason"] = "length" if cut else completions[-1].finish_reason
        record["seconds"] = round(time.monotonic() - work.started, 3)
        record["finished_at"] = now_iso()
        return record

    def process(self, doc: Document, backend: Backend) -> dict[str, Any]:
        """Run the job on one document, every call of a stage at once; returns its record
        (raises BackendFailure 'network'). What `audit replay` runs."""
        prepared = self._prepare(doc, backend)
        while isinstance(prepared, DocWork):
            work = prepared
            waiting = list(work.todo)
            work.todo.clear()
            try:
                answers = backend.complete_many([work.jobs[i] for i in waiting], self.job.settings)
            except BackendFailure as failure:
                if failure.kind == "network":
                    raise
                seconds = time.monotonic() - work.started
                return self._error_record(
                    doc, failure.kind, failure.message, seconds, backend.label, work.started_at
                )
            for i, answer in zip(waiting, answers, strict=True):
                work.results[i] = trim_cut(answer)
            prepared = self._advance(work, backend)
        return prepared

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
