"""Text from clients made safe for a log line: escaped and bounded.

A request path arrives URL-decoded, so `%0A` is a real newline and `%1B[2J` a real terminal
escape. Written as is, it would start a forged line in the request log or redraw the
operator's terminal. `escape` turns every control, format and separator character (and
lone surrogates, and the backslash itself, so escapes stay unambiguous) into a visible
`\\xNN` / `\\uNNNN`; `bounded` cuts long text with a marker saying how much was cut.
"""

from __future__ import annotations

import re

MAX_PATH_CHARS = 256  # of a request path in the request log and the audit log
MAX_METHOD_CHARS = 16

# C0, DEL, C1, soft hyphen, bidi marks and overrides, zero-width characters, line and
# paragraph separators, BOM, interlinear annotations, lone surrogates, backslash.
_UNSAFE = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every character that could break or forge a log line made visible."""
    return _UNSAFE.sub(_escaped, text)


def bounded(text: str, limit: int = MAX_PATH_CHARS) -> str:
    """`text` cut to `limit` characters, with `...[+N chars]` when something was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


def safe(text: str, limit: int = MAX_PATH_CHARS) -> str:
    """`text` bounded, then escaped (what goes into a log line from a client)."""
    return escape(bounded(text, limit))
