"""One `sovcli batch` run, from a model reference and a folder to a summary.

`BatchSession` resolves the model (or checks the `--endpoint` servers), opens the results
file, plans which documents still need work, loads the engine only when there is work, and
runs them. It prints nothing: what the user must see (a repaired results file, an endpoint
left out) goes to the `notify` callback, even with progress turned off; the progress of the
documents goes to a `sovcli.progress.Progress`. The CLI shows both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sovcli.batch.chunklog import ChunkLog, doc_id
from sovcli.batch.journal import Journal
from sovcli.batch.runner import (
    BatchJob,
    BatchRunner,
    Document,
    Summary,
    documents_of,
    outdated_lines,
    plan,
)
from sovcli.errors import NetworkError, UsageError
from sovcli.progress import NULL_PROGRESS, Progress, ProgressTask

DEFAULT_REMOTE_CONTEXT = 4096


def model_identity(
    ref: str, *, remote: bool, dry_run: bool = False, progress: Progress | None = None
) -> tuple[dict[str, Any], Any]:
    """The model part of the resume key, and the InstalledModel for local runs.

    A local model is pulled first when missing, except for a dry run (which loads nothing).
    """
    if remote:
        return {"ref": ref, "remote": True}, None
    from sovcli.resolve import ensure_model, find_installed

    installed = (
        find_installed(ref) if dry_run else ensure_model(ref, action="batch", progress=progress)
    )
    if installed is None:  # dry run of a model not pulled yet
        return {"ref": ref}, None
    manifest_sha = getattr(installed, "manifest_sha256", None)
    meta: dict[str, Any] = {"ref": installed.ref, "manifest_sha256": manifest_sha}
    if not manifest_sha:  # a .gguf used in place: its own hash identifies it
        from sovcli.store.hashing import sha256_file

        meta["file_sha256"] = sha256_file(Path(installed.gguf_path))
    return meta, installed


def _ask_policy_about(endpoints: tuple[str, ...]) -> None:
    """The site policy's `network = "deny"` refuses endpoints off this machine (PolicyDenied),
    before a document is sent anywhere."""
    from sovcli.batch.remote import is_loopback
    from sovcli.governance.policy import enforce_network

    for url in endpoints:
        enforce_network(url, "batch", loopback=is_loopback(url))


def no_documents_error(job: BatchJob) -> UsageError:
    """The error for a folder (after --include/--exclude) that holds nothing to process."""
    if job.include or job.exclude:
        hint = "No file matched --include/--exclude; check the patterns (they match names too)."
    else:
        hint = (
            "Give a folder of .txt .md .html .pdf .docx .csv or .eml files "
            "(hidden files and folders are skipped)."
        )
    return UsageError(f"no documents found in {job.input_dir}", hint=hint)


def _ignore(_message: str) -> None:
    pass


class _IdleBackend:
    """Stands in when every document is already done (no model load)."""

    label = "local"

    def count_tokens(self, text: str) -> int:
        return len(text)

    def text_budget(self, render: Any, max_tokens: int) -> int:
        return 1 << 30

    def complete_many(self, jobs: Any, settings: Any) -> list[Any]:  # pragma: no cover
        raise AssertionError("nothing to run")


@dataclass
class BatchSession:
    """A batch run: the job, where it runs (local model or endpoints), where progress goes."""

    job: BatchJob
    model_ref: str | None = None  # resolved into job.model first (None: job.model as given)
    installed: Any = None  # the InstalledModel of a local run
    endpoints: tuple[str, ...] = ()
    api_key: str | None = None  # default: SOVCLI_API_KEY
    proxy: str | None = None  # --proxy: for endpoints off this machine (never from the env)
    remote_context: int = DEFAULT_REMOTE_CONTEXT
    ctx: int | None = None
    threads: int | None = None  # decode threads of the local engine (None: physical cores)
    progress: Progress = NULL_PROGRESS
    backends: list[Any] | None = None  # run on these (None: the local engine or the endpoints)
    notify: Callable[[str], None] = _ignore  # messages that must be seen (not progress)
    ray: str | None = None  # --ray ADDRESS: run on the nodes of this Ray cluster ("auto")
    draft_ref: str | None = None  # --draft MODEL: resolved into job.draft_model first
    draft: Any = None  # the InstalledModel of the draft model (local runs)
    _task: ProgressTask | None = field(default=None, init=False, repr=False)
    _runner: BatchRunner | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _done: int = field(default=0, init=False, repr=False)

    @property
    def interrupted_counts(self) -> tuple[int, int]:
        """After a stop: (documents recorded by this run, answers kept for the next run)."""
        if self._runner is None:
            return 0, 0
        return self._runner.summary.processed, self._runner.kept_chunks

    def _prepare(self, *, dry_run: bool) -> None:
        """Refuse a folder without documents, then resolve the model (pulled unless dry run).

        In that order, so that an empty folder costs no download and creates no results file.
        """
        job = self.job
        if not documents_of(job):
            raise no_documents_error(job)
        if self.endpoints and not dry_run:
            _ask_policy_about(self.endpoints)
        if self.model_ref is not None:
            remote = bool(self.endpoints)
            meta, self.installed = model_identity(
                self.model_ref, remote=remote, dry_run=dry_run, progress=self.progress
            )
            self.job = replace(job, model=meta)
            self.model_ref = None
        if self.draft_ref is not None:
            self._prepare_draft(dry_run=dry_run)

    def _prepare_draft(self, *, dry_run: bool) -> None:
        """The --draft model, resolved and allowed by the site policy like the main model."""
        if self.endpoints or self.ray:
            where = "--endpoint" if self.endpoints else "--ray"
            raise UsageError(
                f"--draft runs on this machine's engine only, not with {where}",
                hint="Drop --draft (the servers or nodes draft from n-grams with --spec auto).",
            )
        assert self.draft_ref is not None
        meta, self.draft = model_identity(
            self.draft_ref, remote=False, dry_run=dry_run, progress=self.progress
        )
        self.job = replace(self.job, draft_model=meta)
        self.draft_ref = None

    def plan(self) -> list[Document]:
        """Every document and its state, read-only (the dry run); UsageError when none."""
        self._prepare(dry_run=True)
        return plan(self.job, Journal.read_only(self.job.output))

    def run(self) -> Summary:
        """Process every document not done yet; returns what the run did."""
        if self.ray and self.endpoints:
            raise UsageError("--ray and --endpoint do not go together", hint="Choose one.")
        self._prepare(dry_run=False)
        with Journal.open(self.job.output) as journal:
            if journal.repaired_bytes:
                self.notify(
                    f"repaired {self.job.output}: removed a torn last line "
                    f"({journal.repaired_bytes} bytes) left by an interrupted run"
                )
            documents = plan(self.job, journal)
            replaced = journal.remove_lines(outdated_lines(self.job, journal, documents))
            if replaced:
                self.notify(
                    f"replacing {replaced} outdated record(s) "
                    "(changed documents or retried failures)"
                )
            to_do = sum(1 for d in documents if d.state in ("todo", "redo"))
            if to_do and self.ray:
                return self._run_on_ray(documents, journal, to_do)
            return self._run_here(documents, journal, to_do)

    def _run_here(self, documents: list[Document], journal: Journal, to_do: int) -> Summary:
        """On this machine's engine, or the endpoints; long documents saved chunk by chunk."""
        keep = {doc_id(d.key) for d in documents if d.state in ("todo", "redo")}
        chunklog = ChunkLog.open(self.job.output, keep=keep)
        engine = None
        backends: list[Any] = []
        try:
            if to_do == 0:  # nothing to do: load no model, call no server
                backends = [_IdleBackend()]
            elif self.backends is not None:
                backends = self.backends
            elif self.endpoints:
                backends = self._remote_backends()
            else:
                engine, backends = self._local_backend()
            self._runner = BatchRunner(
                self.job, backends, journal, on_record=self._on_record, chunklog=chunklog
            )
            summary = self._start(documents, to_do)
            if engine is not None:  # what speculative decoding drafted over the run
                stats = engine.stats()
                summary.drafted_tokens = stats.drafted_tokens_total
                summary.accepted_tokens = stats.accepted_tokens_total
            return summary
        finally:
            for backend in backends:  # nothing generates once the journal closes
                cancel = getattr(backend, "cancel_all", None)
                if cancel is not None:
                    cancel()
            chunklog.close(finished=self._runner.finished_ids if self._runner else None)
            if engine is not None:
                engine.close()

    def _run_on_ray(self, documents: list[Document], journal: Journal, to_do: int) -> Summary:
        """Across a Ray cluster: one engine per node, the records written here."""
        from sovcli.batch.ray_backend import RayCluster, RayRunner

        assert self.ray is not None
        cluster = RayCluster.connect(
            self.ray, self.job, self.installed, threads=self.threads, ctx=self.ctx,
            progress=self.progress, notify=self.notify,
        )  # fmt: skip
        try:
            self._runner = RayRunner(self.job, cluster, journal, on_record=self._on_record)
            return self._start(documents, to_do)
        finally:
            cluster.close()

    def _start(self, documents: list[Document], to_do: int) -> Summary:
        assert self._runner is not None
        if to_do:
            done = len(documents) - to_do
            self.progress.note(
                f"batch: {to_do} of {len(documents)} documents to process ({done} already done)"
            )
            self._task = self.progress.task("batch", total=to_do, unit="docs")
        try:
            return self._runner.run(documents)
        finally:
            if self._task is not None:
                self._task.close()

    def _on_record(self, record: dict[str, Any]) -> None:
        """After each document: one more done; the label carries tokens and failures."""
        if self._task is None or self._runner is None:
            return
        with self._lock:  # records arrive from every worker thread
            self._done += 1
            summary = self._runner.summary
            failed = f", {summary.failed} failed" if summary.failed else ""
            label = f"batch {summary.completion_tokens:,} tok{failed}"
            self._task.update(completed=self._done, label=label)

    def _local_backend(self) -> tuple[Any, list[Any]]:
        from sovcli.batch.backends import LocalBackend
        from sovcli.engine.conversation import use_template
        from sovcli.engine.core import Engine
        from sovcli.engine.types import EngineConfig
        from sovcli.store.preset import preset_of

        if self.installed is None:
            raise UsageError("no local model to run (internal: model_identity was not called)")
        preset = preset_of(self.installed)  # a created model: system prompt, template, ctx
        spec: dict[str, Any] = {"speculative": self.job.speculative}
        if self.draft is not None:
            spec["draft_model_path"] = str(self.draft.gguf_path)
        if self.job.draft_max is not None:
            spec["draft_max"] = self.job.draft_max
        config = EngineConfig(
            model_path=str(self.installed.gguf_path),
            n_parallel=self.job.parallel,
            n_ctx=self.ctx or (preset.parameters.get("ctx") if preset else None),
            n_threads=self.threads,
            **spec,
        )
        engine = Engine(config)
        # The mode the engine runs in (reproducible engines do not draft: auto is off there).
        self.job = replace(self.job, speculative=engine.speculative)
        use_template(engine, preset.template if preset else None)
        return engine, [LocalBackend(engine, system=preset.system if preset else None)]

    def _remote_backends(self) -> list[Any]:
        """The endpoints that answer; NetworkError when none does."""
        from sovcli.batch.remote import RemoteBackend
        from sovcli.settings import get

        model = self.job.model["ref"]
        api_key = self.api_key or get("SOVCLI_API_KEY")
        backends = []
        problems = []
        for url in self.endpoints:
            backend = RemoteBackend(
                url, model, api_key=api_key, context_tokens=self.remote_context, proxy=self.proxy
            )
            try:
                listed = backend.check()
            except NetworkError as exc:
                problems.append(exc)
                self.notify(f"warning: {exc.message}; not using it")
                continue
            if listed and model not in listed:
                self.notify(
                    f"note: {backend.base} lists {', '.join(listed[:5])}; asking it for '{model}'"
                )
            backends.append(backend)
        if not backends:
            raise NetworkError(
                problems[0].message, hint="Start the servers (sovcli serve) or fix --endpoint."
            )
        return backends
