"""The tamper-evident audit trail. INTERFACE STUB: the audit helper fills it in."""

from __future__ import annotations

from typing import Any


def audit_event(event: str, **fields: Any) -> dict[str, Any]:
    """Append one record (`event` plus `fields`) to the site's audit trail and return it.

    Adds time, OS user, pid, sequence number and the previous record's hash. Raises AuditError
    when the trail cannot be written (commands then stop: fail closed).
    """
    return {"event": event, **fields}


def chain_summary(model_digest: str | None = None) -> dict[str, Any]:
    """Head hash and record counts (for one model when `model_digest` is given)."""
    return {}
