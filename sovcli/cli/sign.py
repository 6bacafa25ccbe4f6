"""Commands: placeholder filled in by issue #14's work."""

from __future__ import annotations

from typing import Any

COMMANDS: dict[str, Any] = {}
GROUPS: dict[str, Any] = {}
