"""`replay_record`: re-run one recorded answer and say whether the output is byte-identical.

Two kinds of record can be replayed:

- a `sovcli batch` result (one line of the results file): the document is read again from
  the folder the record names (its sha256 must still match), extracted with the recorded
  options, chunked and prompted exactly as the run did (template, schema, parameters,
  context), on the installed model whose manifest is the recorded one; the new `output` is
  compared with the recorded one;
- an audit record written with content logging (`prompt`, `completion`, `params`,
  `model_digest`): the prompt is generated again with the recorded parameters.

The engine runs with batch-invariant kernels (`EngineConfig.reproducible`), one sequence: a
record made in reproducible mode replays byte for byte whatever `--parallel` or load it was
made under. Anything that would make the comparison meaningless (another model, a changed
document, a prompt that no longer hashes to the recorded one) is refused before the model
is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli.batch.journal import record_path
from sovcli.errors import IntegrityError, ModelNotFoundError, UsageError

MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReplayResult:
    """The outcome: whether the new output is byte-identical, both outputs, and how it ran."""

    matches: bool
    expected: str
    actual: str
    detail: str


def replay_record(path: Path | str, line_or_id: int | str | None = None) -> ReplayResult:
    """Replay the record at 1-based line `line_or_id` of `path` (or the last one whose
    document path, document id or request id is `line_or_id`; or the only record)."""
    record, where = load_record(Path(path), line_or_id)
    if "prompt_sha256" in record and "params" in record:
        return _replay_batch(record, where)
    if "event" in record:
        return _replay_audit(record, where)
    raise UsageError(
        f"{where} is neither a batch result nor an audit record",
        hint="Give a line of a `sovcli batch` results file or of the audit trail.",
    )


# --- finding the record -------------------------------------------------------------------


def load_record(path: Path, line_or_id: int | str | None) -> tuple[dict[str, Any], str]:
    """The record and a `file:line` label for messages; UsageError when it is not there."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise UsageError(f"{path} is larger than {MAX_RECORD_BYTES >> 20} MiB")
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if isinstance(line_or_id, int):
        if not 1 <= line_or_id <= len(lines):
            raise UsageError(f"{path} has {len(lines)} lines; there is no line {line_or_id}")
        return _parse(lines[line_or_id - 1], path, line_or_id), f"{path}:{line_or_id}"
    found: tuple[dict[str, Any], str] | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = _parse(raw, path, number)
        except UsageError:
            continue
        count += 1
        if line_or_id is None or line_or_id in _ids_of(record):
            found = (record, f"{path}:{number}")
    if line_or_id is None and count != 1:
        raise UsageError(
            f"{path} holds {count} records; which one?",
            hint="Name it as FILE:LINE or with --id (a document path or request id).",
        )
    if found is None:
        raise UsageError(f"no record of {path} has the id {line_or_id!r}")
    return found


def _parse(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise UsageError(f"{path}:{number} is not a JSON record") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path}:{number} is not a JSON object")
    return record


def _ids_of(record: dict[str, Any]) -> set[str]:
    ids = {str(record[k]) for k in ("request_id", "document", "id", "path") if record.get(k)}
    if "prompt_sha256" in record:
        ids.add(record_path(record))
    return ids


def _require(record: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        raise UsageError(
            f"{where} has no usable '{key}'; it cannot be replayed",
            hint="Only records written by a sovcli that records what a replay needs qualify.",
        )
    return value


# --- batch results ------------------------------------------------------------------------


def _replay_batch(record: dict[str, Any], where: str) -> ReplayResult:
    from sovcli.batch.runner import BatchRunner

    if record.get("status") not in ("ok", "truncated"):
        raise UsageError(f"{where} records a failure ({record.get('error')}); nothing to replay")
    expected = _canonical(record.get("output"))
    job, doc = _batch_job(record, where)
    model = _installed_for_batch(_require(record, "model", dict, where), where)
    with _engine(model.gguf_path, job.context) as engine:
        from sovcli.batch.backends import LocalBackend

        backend = LocalBackend(engine)
        runner = BatchRunner(job, [backend], journal=None)  # type: ignore[arg-type]
        result = runner.process(doc, backend)
    if result.get("status") not in ("ok", "truncated"):
        actual = f"[{result.get('error_kind')}] {result.get('error')}"
        return ReplayResult(False, expected, actual, f"the replay failed: {actual}")
    actual = _canonical(result.get("output"))
    return ReplayResult(expected == actual, expected, actual, _detail(record, model, expected))


def _batch_job(record: dict[str, Any], where: str) -> tuple[Any, Any]:
    """The BatchJob and Document that produced `record`, checked against its hashes."""
    from sovcli.batch.isolate import ExtractOptions
    from sovcli.batch.journal import record_key
    from sovcli.batch.prompt import PromptTemplate
    from sovcli.batch.runner import BatchJob, Document
    from sovcli.store.hashing import sha256_file

    fields = _require(record, "replay", dict, where)
    params = _require(record, "params", dict, where)
    template = PromptTemplate(_require(fields, "prompt", str, where))
    if template.sha256 != record.get("prompt_sha256"):
        raise IntegrityError(f"{where}: the recorded prompt does not hash to its prompt_sha256")
    settings = _settings(params, fields.get("schema"), where)
    rel = record_path(record)
    folder = Path(_require(fields, "input", str, where))
    source = folder / rel
    if not source.is_file():
        raise UsageError(f"the document {source} is gone", hint="Replay needs the input file.")
    if sha256_file(source) != record.get("sha256"):
        raise IntegrityError(
            f"the document {source} changed since {where} was written (sha256 differs)"
        )
    extract = ExtractOptions(
        encoding=fields.get("encoding"),
        ocr=str(fields.get("ocr") or "auto"),
        ocr_lang=fields.get("ocr_lang"),
    )
    job = BatchJob(
        input_dir=folder,
        output=Path("/dev/null"),
        template=template,
        settings=settings,
        model=record["model"],
        chunk_tokens=params.get("chunk_tokens"),
        chunk_overlap=int(params.get("chunk_overlap", 64)),
        context=params.get("context"),
        extract=extract,
    )
    if job.params != params:
        raise UsageError(
            f"{where} was written with parameters this sovcli cannot reproduce "
            f"(method {params.get('method')!r})",
            hint="Replay it with the sovcli version that wrote it.",
        )
    doc = Document(source, rel, source.stat().st_size, record["sha256"], None, record_key(record))
    return job, doc


def _settings(params: dict[str, Any], schema: Any, where: str) -> Any:
    from sovcli.batch.backends import GenerationSettings
    from sovcli.batch.schema import schema_sha256

    grammar = None
    if params.get("schema_sha256") is not None:
        if not isinstance(schema, dict) or schema_sha256(schema) != params["schema_sha256"]:
            raise IntegrityError(f"{where}: the recorded schema does not hash to schema_sha256")
        from sovcli.engine.grammar import json_schema_to_gbnf

        grammar = json_schema_to_gbnf(schema)
    try:
        return GenerationSettings(
            max_tokens=int(params["max_tokens"]),
            temperature=float(params["temperature"]),
            top_p=float(params["top_p"]),
            top_k=int(params["top_k"]),
            seed=int(params["seed"]),
            schema=schema if grammar else None,
            grammar=grammar,
        )
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{where} has incomplete sampling parameters") from None


def _installed_for_batch(meta: dict[str, Any], where: str) -> Any:
    """The installed model the record names, refused unless it is the very same one."""
    if meta.get("remote"):
        raise UsageError(
            f"{where} was answered by a remote endpoint; replay runs only local models",
            hint="Replay it on that server's machine from its own audit trail.",
        )
    from sovcli.resolve import find_installed
    from sovcli.store.hashing import sha256_file

    ref = str(meta.get("ref") or "")
    model = find_installed(ref) if ref else None
    if model is None:
        raise ModelNotFoundError(
            f"the model {ref or '?'} of {where} is not installed",
            hint="Install the exact model the record names (sovcli pull, or import its bundle).",
        )
    recorded = meta.get("manifest_sha256")
    if recorded and model.manifest_sha256 != recorded:
        raise IntegrityError(
            f"the installed {model.ref} is not the model of {where}: manifest sha256 "
            f"{model.manifest_sha256} != recorded {recorded}",
            hint="Install the model version that wrote the record.",
        )
    if not recorded and meta.get("file_sha256") != sha256_file(Path(model.gguf_path)):
        raise IntegrityError(f"{model.gguf_path} is not the file that wrote {where}")
    _allowed(model)
    return model


# --- audit records ------------------------------------------------------------------------


def _replay_audit(record: dict[str, Any], where: str) -> ReplayResult:
    from sovcli.engine.recorded import request_from_params

    expected = _require(record, "completion", str, where)
    prompt = record.get("prompt", record.get("messages"))
    params = _require(record, "params", dict, where)
    if "sampling" not in params:  # run/chat records: the sampling parameters, flat
        params = {
            "sampling": params,
            "max_tokens": record.get("max_tokens"),
            "stop": record.get("stop") or [],
        }
    digest = _require(record, "model_digest", str, where)
    model = _installed_with_digest(digest, where)
    with _engine(model.gguf_path, None) as engine:
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            prompt = engine.render_chat(prompt)
        if not isinstance(prompt, (str, list)) or not prompt:
            raise UsageError(f"{where} carries no prompt (audit content logging was off)")
        request = request_from_params(prompt, params)
        result = engine.generate(request)
    if result.finish_reason == "error":
        return ReplayResult(False, expected, "", f"the replay failed: {result.error}")
    actual = result.text
    return ReplayResult(expected == actual, expected, actual, _detail(record, model, expected))


def _installed_with_digest(digest: str, where: str) -> Any:
    from sovcli.governance.identity import model_digest
    from sovcli.store.registry import list_installed

    for model in list_installed():
        if model_digest(model) == digest:
            _allowed(model)
            return model
    raise ModelNotFoundError(
        f"no installed model has the digest {digest} that {where} records",
        hint="Install the exact model the record names (sovcli pull, or import its bundle).",
    )


# --- shared -------------------------------------------------------------------------------


def _allowed(model: Any) -> None:
    """The site policy decides whether this model may run (a replay runs it like batch)."""
    from sovcli.governance.policy import enforce_use

    enforce_use(model, "batch")


def _engine(gguf: Path | str, context: int | None) -> Any:
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    config = EngineConfig(model_path=str(gguf), n_parallel=1, n_ctx=context, reproducible=True)
    return Engine(config)


def _canonical(output: Any) -> str:
    """The recorded output as the text compared byte for byte (JSON for --schema values)."""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _detail(record: dict[str, Any], model: Any, expected: str) -> str:
    mode = {
        True: ", recorded in reproducible mode",
        False: ", recorded WITHOUT reproducible mode (its answer depended on its batch)",
    }.get(record.get("reproducible"), "")
    return f"{model.ref}, {len(expected.encode('utf-8'))} bytes compared{mode}"
