"""Output conventions: data on stdout, progress and logs on stderr, `--json` for scripts."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any

from rich.console import Console


@lru_cache(maxsize=1)
def err_console() -> Console:
    """The console for progress, logs and errors (stderr)."""
    return Console(stderr=True, highlight=False)


@lru_cache(maxsize=1)
def out_console() -> Console:
    """The console for data (stdout): tables and reports."""
    return Console(highlight=False)


def print_json(obj: Any) -> None:
    """Write `obj` as JSON to stdout, one document, newline-terminated."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """One line of progress or log on stderr, never re-wrapped (a pipe or log keeps it whole)."""
    err_console().print(message, markup=False, soft_wrap=True)
