"""`--schema`: load the schema, parse model output, merge per-chunk results, validate.

The validator is a small stdlib subset of JSON Schema (type, properties, required, enum,
const, items, min/max items and lengths, numeric bounds, additionalProperties false, anyOf /
oneOf). It reports the first problem as one line; the grammar already constrains the
output, so this mostly catches output cut off by --max-tokens and merge surprises.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sovcli.errors import UsageError


def load_schema(path: Path) -> dict[str, Any]:
    """The JSON schema in `path` (a JSON object), or UsageError."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read schema {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"schema {path} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise UsageError(
            f"schema {path} must be a JSON object",
            hint='e.g. {"type": "object", "properties": {...}, "required": [...]}',
        )
    return schema


def schema_sha256(schema: dict[str, Any]) -> str:
    """A stable identity for the schema (key order does not matter)."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_output(text: str) -> Any:
    """The JSON value in `text`; raises ValueError with a short reason."""
    stripped = text.strip()
    if stripped.startswith("```"):  # servers without grammar support sometimes fence it
        stripped = stripped.strip("`")
        stripped = stripped[4:] if stripped.startswith("json") else stripped
    return json.loads(stripped)


def merge_values(values: list[Any]) -> Any:
    """Merge per-chunk extractions of one document.

    Objects merge key by key; lists are concatenated without duplicates; for a scalar the
    first non-empty value (not null, "" or "unknown") wins.
    """
    present = [v for v in values if not _is_empty(v)]
    if not present:
        return values[0] if values else None
    if all(isinstance(v, dict) for v in present):
        keys: list[str] = []
        for value in present:
            keys.extend(k for k in value if k not in keys)
        return {k: merge_values([v[k] for v in present if k in v]) for k in keys}
    if all(isinstance(v, list) for v in present):
        merged: list[Any] = []
        seen: set[str] = set()
        for value in present:
            for item in value:
                marker = json.dumps(item, sort_keys=True)
                if marker not in seen:
                    seen.add(marker)
                    merged.append(item)
        return merged
    return present[0]


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "unknown", "n/a", "none", "null")
    return isinstance(value, (list, dict)) and not value


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> str | None:
    """The first way `value` violates `schema` (a one-line message), or None."""
    if not isinstance(schema, dict):
        return None
    problem = _check_type(value, schema.get("type"), where)
    if problem:
        return problem
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: must be {schema['const']!r}"
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            options = schema[keyword]
            if not any(validate(value, option, where) is None for option in options):
                return f"{where}: matches none of {keyword}"
    if isinstance(value, dict):
        return _check_object(value, schema, where)
    if isinstance(value, list):
        return _check_array(value, schema, where)
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{where}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where}: longer than {schema['maxLength']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: below {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: above {schema['maximum']}"
    return None


def _check_type(value: Any, declared: Any, where: str) -> str | None:
    if declared is None:
        return None
    names = declared if isinstance(declared, list) else [declared]
    for name in names:
        kinds = _TYPES.get(name)
        if kinds is None:
            return None  # unknown type keyword: do not guess
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, kinds):
            return None
    return f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"


def _check_object(value: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    for key in schema.get("required", []):
        if key not in value:
            return f"{where}: missing required key '{key}'"
    properties = schema.get("properties", {})
    for key, item in value.items():
        if key in properties:
            problem = validate(item, properties[key], f"{where}.{key}")
            if problem:
                return problem
        elif schema.get("additionalProperties") is False:
            return f"{where}: unexpected key '{key}'"
    return None


def _check_array(value: list[Any], schema: dict[str, Any], where: str) -> str | None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        return f"{where}: fewer than {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{where}: more than {schema['maxItems']} items"
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            problem = validate(item, items, f"{where}[{i}]")
            if problem:
                return problem
    return None
