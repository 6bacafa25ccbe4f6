"""The tamper-evident audit trail: what every command records, and its chain.

`audit_event(event, **fields)` appends one record to the site's trail (`$SOVCLI_AUDIT_DIR`,
else `<SOVCLI_HOME>/audit`): the fields given plus `seq`, `time` (UTC), `command`, `user`
(the OS user), `pid`, `host` and `prev` (the hash of the line before). A record never holds
prompt or completion text (fields `prompt`, `completion`, `messages`) unless
`SOVCLI_AUDIT_CONTENT=1`. When the trail cannot be written it raises AuditError: the command
stops (fail closed). `SOVCLI_AUDIT=0` turns the trail off (nothing written).

The files, the writer and the checks live in `audit_files`, `audit_chain`, `audit_verify`
and `audit_seal`; this module holds the site-wide entry points.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from sovcli import paths, settings
from sovcli.errors import AuditError, SovcliError
from sovcli.governance.audit_chain import ChainWriter
from sovcli.governance.audit_files import ACTIVE_NAME, SEAL_EVENT, ChainFiles
from sovcli.store.model import InstalledModel

CONTENT_FIELDS = frozenset({"prompt", "completion", "messages"})
WRITE_HINT = (
    "Make the audit folder writable or point SOVCLI_AUDIT_DIR at one that is; sovcli runs "
    "no audited command while its audit trail cannot be written."
)
_WRITERS: dict[Path, ChainWriter] = {}
_WRITERS_LOCK = threading.Lock()


def _on(name: str, default: bool) -> bool:
    return default if settings.raw(name) is None else settings.flag(name)


def audit_enabled() -> bool:
    """Whether records are written (`SOVCLI_AUDIT`, on unless set to 0; a site policy with
    `[audit] require = true` keeps it on whatever the variable says)."""
    if _on("SOVCLI_AUDIT", True):
        return True
    from sovcli.governance.policy import audit_required  # policy records through this module

    return audit_required()


def content_enabled() -> bool:
    """Whether run/chat/batch records hold prompts and answers (`SOVCLI_AUDIT_CONTENT`)."""
    return _on("SOVCLI_AUDIT_CONTENT", False)


def site_chain() -> ChainFiles:
    """The files of the site's audit trail."""
    return ChainFiles(paths.audit_dir() / ACTIVE_NAME)


def configure(writer: ChainWriter) -> ChainWriter:
    """Give `writer` the rotation and retention settings as they are now."""
    rotate = settings.get("SOVCLI_AUDIT_ROTATE_SIZE")
    writer.rotate_bytes = 64 * 1024 * 1024 if rotate is None else rotate
    writer.daily = _on("SOVCLI_AUDIT_ROTATE_DAILY", True)
    writer.retention_days = settings.get("SOVCLI_AUDIT_RETENTION_DAYS") or 0
    return writer


def chain_writer(files: ChainFiles) -> ChainWriter:
    """This process's shared writer for the chain `files` (configured as settings are now)."""
    key = files.active.absolute()
    with _WRITERS_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = ChainWriter(files)
    return configure(writer)


def current_command() -> str:
    """The sovcli command this process runs (e.g. `run`, `audit seal`), from its arguments."""
    argv = sys.argv
    program = Path(argv[0]).name if argv else ""
    if program in ("sovcli", "__main__.py", "-m") or program.startswith("sovcli"):
        words = [a for a in argv[1:3] if not a.startswith("-")]
        if words[:1] == ["audit"] or words[:1] == ["policy"]:
            return " ".join(words[:2])
        return words[0] if words else "sovcli"
    return program or "python"


def write_hint_error(files: ChainFiles, exc: OSError) -> AuditError:
    """The AuditError for a trail that cannot be written."""
    reason = exc.strerror or str(exc)
    return AuditError(f"cannot write the audit trail {files.active}: {reason}", hint=WRITE_HINT)


def _plain(value: Any) -> Any:
    """A dataclass (sampling parameters, ...) as a dict; anything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def audit_event(event: str, **fields: Any) -> dict[str, Any]:
    """Append one record (`event` plus `fields`) to the site's audit trail and return it.

    Adds time, OS user, pid, host, command, sequence number and the previous record's hash.
    Raises AuditError when the trail cannot be written (commands then stop: fail closed).
    With `SOVCLI_AUDIT=0` nothing is written and the record comes back without a seq.
    """
    record: dict[str, Any] = {"event": event, "command": current_command()}
    record.update((k, _plain(v)) for k, v in fields.items())
    if not content_enabled():
        record = {k: v for k, v in record.items() if k not in CONTENT_FIELDS}
    if not audit_enabled():
        return record
    files = site_chain()
    try:
        return chain_writer(files).append(record)
    except OSError as exc:
        raise write_hint_error(files, exc) from None


def serve_audit_log(given: Path | None) -> Path | None:
    """The chain `serve` writes its request records into: `--audit-log` when given, else
    the site's trail (None when `SOVCLI_AUDIT=0`)."""
    if given is not None:
        return given
    return site_chain().active if audit_enabled() else None


def require_trail() -> None:
    """Check, before a command runs a model, that its records can be written (AuditError
    otherwise: fail closed before any work, not after the answer)."""
    if not audit_enabled():
        return
    files = site_chain()
    try:
        chain_writer(files).open()
    except OSError as exc:
        raise write_hint_error(files, exc) from None


def audit_answer(
    event: str,
    model: InstalledModel,
    result: Any,
    *,
    engine: Any = None,
    prompt: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """One record per answer of `run` or `chat`: the model and its digest, token counts,
    finish reason and duration (`result` is the engine's GenerationResult), and how the
    `engine` ran (reproducible mode, context: what a replay needs; speculative mode and
    the draft model, `draft_model_fields`, else the draft file's name); the prompt and the
    answer only with SOVCLI_AUDIT_CONTENT=1."""
    from sovcli.governance.identity import model_digest

    if engine is not None:
        fields.setdefault("reproducible", getattr(engine, "reproducible", None))
        fields.setdefault("speculative", getattr(engine, "speculative", None))
        draft_path = getattr(getattr(engine, "config", None), "draft_model_path", None)
        if draft_path:
            fields.setdefault("draft_model", Path(draft_path).name)
        fields.setdefault("context", engine.info.n_ctx)
    digest = model_digest(model)
    return audit_event(
        event,
        model=model.ref if digest else str(model.gguf_path),
        model_digest=digest,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_prompt_tokens=result.cached_prompt_tokens,
        finish_reason=result.finish_reason,
        duration_s=round(result.prompt_eval_s + result.generation_s, 4),
        prompt=prompt,
        completion=result.text,
        **fields,
    )


def draft_model_fields(model: InstalledModel) -> dict[str, Any]:
    """`draft_model` (its `name:tag`, or its file for a bare .gguf) and `draft_model_digest`
    of the model that drafted an answer's tokens (`--draft`)."""
    from sovcli.governance.identity import model_digest

    digest = model_digest(model)
    return {
        "draft_model": model.ref if digest else str(model.gguf_path),
        "draft_model_digest": digest,
    }


def audit_store_change(action: str, model: Any, **fields: Any) -> dict[str, Any]:
    """A record for a change to the store (pull, import, rm, sign): which model (`name:tag`),
    its digest and where it came from (the manifest's source)."""
    from sovcli.governance.identity import model_digest

    installed = isinstance(model, InstalledModel)
    source = model.manifest.get("source") if installed else None
    return audit_event(
        "store",
        action=action,
        model=getattr(model, "ref", str(model)),
        model_digest=model_digest(model) if installed else None,
        source=source if isinstance(source, dict) else None,
        **fields,
    )


@functools.lru_cache(maxsize=16)
def _store_digest(ref: str, manifest_sha256: str) -> str | None:
    """The digest of the installed model `name:tag` whose manifest has this hash."""
    from sovcli.governance.identity import model_digest
    from sovcli.store.registry import get_installed

    name, _, tag = ref.rpartition(":")
    try:
        model = get_installed(name, tag) if name else None
    except SovcliError:
        return None
    if model is None or model.manifest_sha256 != manifest_sha256:
        return None
    return model_digest(model)


def audit_batch_record(record: dict[str, Any], *, journal: Path) -> dict[str, Any]:
    """One record per batch document, from its journal record: the document (path and
    sha256), the model digest, counts, status; the answer only with SOVCLI_AUDIT_CONTENT=1."""
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    tokens = record.get("tokens") if isinstance(record.get("tokens"), dict) else {}
    draft = record.get("draft_model")
    extra: dict[str, Any] = {}
    if isinstance(draft, dict):  # only with --draft: an answer's record says which model
        extra = {"draft_model": draft.get("ref"), "draft_model_digest": _journal_digest(draft)}
    return audit_event(
        "batch_document",
        model=model.get("ref") or model.get("remote"),
        model_digest=_journal_digest(model),
        document=record.get("path"),
        document_sha256=record.get("sha256"),
        journal=str(journal),
        status=record.get("status"),
        error_kind=record.get("error_kind"),
        prompt_tokens=tokens.get("prompt"),
        completion_tokens=tokens.get("completion"),
        seconds=record.get("seconds"),
        backend=record.get("backend"),
        prompt_sha256=record.get("prompt_sha256"),
        params_sha256=record.get("params_sha256"),
        reproducible=record.get("reproducible"),
        speculative=record.get("speculative"),
        **extra,
        completion=record.get("output"),
    )


def _journal_digest(model: dict[str, Any]) -> str | None:
    """The digest of a model as a batch record names it (`file_sha256`, or the installed
    model whose manifest has `manifest_sha256`)."""
    file_sha = model.get("file_sha256")
    if file_sha:
        return f"sha256:{file_sha}"
    if model.get("manifest_sha256") and isinstance(model.get("ref"), str):
        return _store_digest(model["ref"], model["manifest_sha256"])
    return None


def seal(key_path: Path, chain: Path | None = None) -> dict[str, Any]:
    """Append a seal record signing the current head of the chain (the site's by default)."""
    from sovcli.governance.audit_seal import load_private_key, seal_fields

    private_key = load_private_key(key_path)
    files = site_chain() if chain is None else ChainFiles.at(chain)
    record = {"event": SEAL_EVENT, "command": "audit seal"}
    try:
        return chain_writer(files).append(
            record, build=lambda seq, digest: seal_fields(private_key, seq, digest)
        )
    except OSError as exc:
        raise write_hint_error(files, exc) from None


def verify(path: Path | None = None, key_path: Path | None = None) -> Any:
    """Verify the chain at `path` (default: the site's trail); a `VerifyReport`."""
    from sovcli.governance.audit_seal import load_public_key
    from sovcli.governance.audit_verify import verify_chain

    target = paths.audit_dir() if path is None else path
    if not target.exists():
        raise AuditError(
            f"no audit trail at {target}",
            hint="Give the audit folder or file (default: $SOVCLI_AUDIT_DIR, else "
            "<SOVCLI_HOME>/audit).",
        )
    public_key = load_public_key(key_path) if key_path is not None else None
    try:
        return verify_chain(target, public_key=public_key)
    except OSError as exc:
        raise AuditError(f"cannot read the audit trail {target}: {exc.strerror or exc}") from None


def _matches(record: dict[str, Any], digest: str) -> bool:
    bare = digest.removeprefix("sha256:")
    for key in ("model_digest", "digest"):
        value = record.get(key)
        if isinstance(value, str) and value.removeprefix("sha256:") == bare:
            return True
    return False


def chain_summary(model_digest: str | None = None) -> dict[str, Any]:
    """Head hash and record counts of the site's trail (for one model when `model_digest`
    is given), and whether the chain verifies: for `sovcli attest`."""
    from sovcli.governance.audit_verify import verify_chain

    files = site_chain()
    summary: dict[str, Any] = {"path": str(files.directory), "enabled": audit_enabled()}
    if not files.directory.is_dir():
        return {**summary, "records": 0, "head": None, "events": {}, "verified": None}
    counts: Counter[str] = Counter()

    def count(record: dict[str, Any]) -> None:
        if model_digest is None or _matches(record, model_digest):
            counts[str(record.get("event"))] += 1

    try:
        report = verify_chain(files.directory, visit=count)
    except OSError as exc:
        raise AuditError(f"cannot read the audit trail {files.directory}: {exc}") from None
    summary.update(
        records=report.records,
        head={"seq": report.head_seq, "hash": report.head_hash},
        start=report.start,
        files=report.files,
        verified=report.ok,
        problems=[str(p) for p in report.problems],
        model_digest=model_digest,
        events=dict(sorted(counts.items())),
        model_records=sum(counts.values()),
    )
    return summary
