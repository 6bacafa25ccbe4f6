"""What `run`, `chat` and `embed` take in besides the prompt: which model (SOVCLI_DEFAULT_MODEL
when MODEL is left out), attached documents (`run -a FILE`), and an output format
(`--format json`, `--schema FILE`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sovcli.errors import InvalidNameError, SovcliError, StoreError, UsageError
from sovcli.store.names import shown

DEFAULT_MODEL_SETTING = "SOVCLI_DEFAULT_MODEL"
NO_MODEL_HINT = (
    f"Name a model (e.g. sovcli run smollm2-135m ...), or set a default: "
    f"export {DEFAULT_MODEL_SETTING}=smollm2-135m"
)


def default_model() -> str:
    """The model SOVCLI_DEFAULT_MODEL names; UsageError (with a hint) when it is unset."""
    from sovcli import settings

    ref = settings.get(DEFAULT_MODEL_SETTING)
    if not ref:
        raise UsageError(
            f"no model given and {DEFAULT_MODEL_SETTING} is not set", hint=NO_MODEL_HINT
        )
    return str(ref)


def names_a_model(text: str) -> bool:
    """Whether `text` names a model: a path or hub reference, an installed model or a catalog
    alias. A lone argument that does not is the prompt, for the default model."""
    from sovcli.resolve import find_installed
    from sovcli.sources.catalog import load_catalog
    from sovcli.store.names import parse_ref

    try:
        parsed = parse_ref(text)
    except (InvalidNameError, SovcliError):
        return False
    if parsed.kind in ("path", "bundle", "hf"):
        return True
    try:
        if find_installed(text) is not None:
            return True
    except StoreError:
        return True  # a broken model: naming it reports the problem
    return parsed.kind == "alias" and load_catalog().get(parsed.name) is not None


def pick_model(
    model: str | None, prompt: str | None, fallback: str | None = None
) -> tuple[str, str | None]:
    """(model reference, prompt argument) from what was typed.

    MODEL left out: `fallback` (the model of a continued conversation) or the default model.
    One argument that names no model, with a default at hand: it is the prompt.
    """
    if model is None:
        return fallback or default_model(), prompt
    if prompt is None and not names_a_model(model):
        from sovcli import settings

        other = fallback or settings.get(DEFAULT_MODEL_SETTING)
        if other:
            return str(other), model
        if not _valid_ref(model):
            raise UsageError(
                f"{shown(model)} is not a model and {DEFAULT_MODEL_SETTING} is not set",
                hint=NO_MODEL_HINT,
            )
    return model, prompt


def _valid_ref(text: str) -> bool:
    from sovcli.store.names import parse_ref

    try:
        parse_ref(text)
    except SovcliError:
        return False
    return True


# --------------------------------------------------------------------------- documents

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ATTACH_HINT = (
    "Attach .txt .md .html .pdf .docx .csv .eml files (a scan needs OCR: see `sovcli batch`)."
)


def read_attachment(path: Path) -> tuple[str, str]:
    """(shown name, text) of a document, extracted in an isolated worker process as `batch`
    does (time and memory limits). UsageError when it cannot be read."""
    from sovcli.batch.extract import ExtractionError
    from sovcli.batch.isolate import WorkerUnavailable, extract_isolated

    name = _CONTROL.sub("?", path.name)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(
            f"-a {name}: the file {what}",
            hint="Give one document per -a; `sovcli batch` reads folders.",
        )
    try:
        text = extract_isolated(path)
    except ExtractionError as exc:
        raise UsageError(f"-a {name}: cannot read the document: {exc}", hint=ATTACH_HINT) from None
    except WorkerUnavailable as exc:
        raise SovcliError(f"cannot start the text extraction worker: {exc}") from None
    return name, text


def with_documents(question: str, documents: list[tuple[str, str]]) -> str:
    """The user message: each document's text, marked with its name, then the question."""
    if not documents:
        return question
    parts = [f'<document name="{name}">\n{text}\n</document>' for name, text in documents]
    return "\n\n".join([*parts, question])


# --------------------------------------------------------------------------- output format


def output_grammar(
    fmt: str | None, schema_path: Path | None
) -> tuple[str | None, dict[str, Any] | None]:
    """(GBNF grammar, JSON schema) for `--format json` / `--schema FILE` (None, None without);
    built before the model loads, so a bad schema costs nothing."""
    if fmt is not None and fmt.strip().lower() != "json":
        raise UsageError(f"--format {fmt!r} is not known", hint="--format json, or --schema FILE")
    if schema_path is not None:
        from sovcli.batch.schema import load_schema
        from sovcli.engine.grammar import json_schema_to_gbnf

        schema = load_schema(schema_path)
        return json_schema_to_gbnf(schema), schema
    if fmt is not None:
        from sovcli.engine.grammar import JSON_OBJECT_GBNF

        return JSON_OBJECT_GBNF, None
    return None, None


def check_json_reply(text: str, schema: dict[str, Any] | None, finish_reason: str) -> None:
    """Refuse a `--format json`/`--schema` reply that is not complete, valid JSON."""
    import json

    if finish_reason == "length":
        raise SovcliError(
            "the JSON reply was cut off at the token limit", hint="Raise --max-tokens."
        )
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SovcliError(f"the reply is not valid JSON: {exc}") from None
    if schema is not None:
        from sovcli.batch.schema import validate

        problem = validate(value, schema)
        if problem:
            raise SovcliError(f"the reply does not match the schema: {problem}")
