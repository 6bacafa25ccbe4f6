"""Keep-alive durations as Ollama writes them: `"5m"`, `"1h30m"`, `"90s"`, `300`, `0`, `-1`.

A number is seconds; a string is a Go-style duration (units ns, us, ms, s, m, h; a bare
number string is seconds too). Negative means "forever" (None here); 0 means "unload as soon
as the model is idle". Anything else (NaN, booleans, units we do not know) is refused.
"""

from __future__ import annotations

import math
import re
from typing import Any

FOREVER_S = 100 * 365 * 86400.0  # longer than this counts as forever
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_MAX_CHARS = 64


class DurationError(ValueError):
    """A value that is not a duration (the message says what is expected)."""


def parse_duration(value: Any) -> float | None:
    """Seconds, or None for forever. Raises `DurationError` for anything else."""
    if isinstance(value, bool) or value is None:
        raise DurationError(_expected())
    if isinstance(value, (int, float)):
        return _seconds(float(value))
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_CHARS:
        raise DurationError(_expected())
    text = value.strip().lower()
    if text in ("forever", "inf", "infinite", "never"):
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return _seconds(sign * float(body))
    except ValueError:
        pass
    total, at = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != at:
            raise DurationError(_expected())
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    if at != len(body) or at == 0:
        raise DurationError(_expected())
    return _seconds(sign * total)


def _seconds(value: float) -> float | None:
    if not math.isfinite(value):
        raise DurationError(_expected())
    if value < 0 or value > FOREVER_S:
        return None
    return value


def _expected() -> str:
    return 'a duration such as "5m", "1h", "30s", a number of seconds, 0 or -1 (forever)'


def format_duration(seconds: float | None) -> str:
    """`5m`, `1h30m`, `45s`, `forever`: how ps and the log show a keep-alive."""
    if seconds is None:
        return "forever"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:g}s" if seconds < 10 and whole != seconds else f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)
