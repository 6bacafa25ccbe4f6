"""Tables from a results file: CSV (every field, for spreadsheets) or Markdown (for people).

One row per document path (the last record wins). For `--schema` runs the top-level keys of
the extracted objects become their own columns.

A CSV cell that a spreadsheet would run as a formula (one starting with `=`, `+`, `-`, `@`, a
tab or a line break, or their full-width forms) gets a leading `'`, as OWASP recommends, so a
document or a model answer such as `=HYPERLINK(...)` is shown as text, never evaluated.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sovcli.batch.journal import iter_records, record_path
from sovcli.errors import UsageError

BASE_COLUMNS = (
    "path", "status", "finish", "chunks", "prompt_tokens", "completion_tokens", "seconds",
)  # fmt: skip
MARKDOWN_CELL_CHARS = 160
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def latest_records(path: Path) -> list[dict[str, Any]]:
    """The last record of every document path in the results file, in first-seen order."""
    if not Path(path).is_file():
        raise UsageError(f"results file {path} does not exist")
    latest: dict[str, dict[str, Any]] = {}
    try:
        for record in iter_records(Path(path)):
            if _is_result(record):
                latest[record_path(record)] = record
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not latest:
        raise UsageError(
            f"{path} is not a sovcli batch results file (no result records in it)",
            hint="Give the file that `sovcli batch ... -o FILE` wrote.",
        )
    return list(latest.values())


def _is_result(record: dict[str, Any]) -> bool:
    """A line written by `sovcli batch`: a document path, a status and a resume key."""
    return (
        isinstance(record.get("path"), str)
        and isinstance(record.get("status"), str)  # ok, truncated, error, needs_ocr
        and "params_sha256" in record
    )


def _output_keys(records: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for record in records:
        output = record.get("output")
        if isinstance(output, dict):
            keys.extend(k for k in output if k not in keys)
    return keys


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the CSV and Markdown reports."""
    keys = _output_keys(records)
    header = [*BASE_COLUMNS, *(f"output.{k}" for k in keys)]
    if not keys:
        header.append("output")
    header.append("error")
    rows = []
    for record in records:
        tokens = record.get("tokens") or {}
        output = record.get("output")
        row = [
            _cell(record.get("path")),
            _cell(record.get("status")),
            _cell(record.get("finish_reason")),
            _cell(record.get("chunks")),
            _cell(tokens.get("prompt")),
            _cell(tokens.get("completion")),
            _cell(record.get("seconds")),
        ]
        if keys:
            row.extend(_cell(output.get(k)) if isinstance(output, dict) else "" for k in keys)
        else:
            row.append(_cell(output))
        row.append(_cell(record.get("error")))
        rows.append(row)
    return header, rows


def csv_safe(cell: str) -> str:
    """`cell` as a spreadsheet shows it as text: a formula prefix gets a leading `'`."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def to_csv(records: list[dict[str, Any]]) -> str:
    """The records as RFC 4180 CSV (CRLF line ends, so a cell holding a bare CR or LF is
    quoted too), full outputs, no cell a spreadsheet would run."""
    header, rows = table_rows(records)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([csv_safe(c) for c in header])
    writer.writerows([csv_safe(c) for c in row] for row in rows)
    return buffer.getvalue()


def _md_escape(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(records: list[dict[str, Any]], title: str = "Batch results") -> str:
    """A Markdown report: a counts line and one table row per document (outputs shortened)."""
    header, rows = table_rows(records)
    ok = sum(1 for r in records if r.get("status") == "ok")
    truncated = sum(1 for r in records if r.get("status") == "truncated")
    failed = len(records) - ok - truncated
    cut = f"{truncated} truncated, " if truncated else ""
    counts = f"{len(records)} documents: {ok} ok, {cut}{failed} failed."
    lines = [f"# {title}", "", counts, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c, MARKDOWN_CELL_CHARS) for c in row) + " |")
    return "\n".join(lines) + "\n"


def render_report(path: Path, fmt: str) -> str:
    """The report of the results file `path` in format 'csv' or 'md'."""
    records = latest_records(path)
    if fmt == "csv":
        return to_csv(records)
    if fmt in ("md", "markdown"):
        return to_markdown(records, title=f"Batch results: {Path(path).name}")
    raise UsageError(f"unknown report format '{fmt}'", hint="Use --format csv or --format md.")
