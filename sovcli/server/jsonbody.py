"""A request body as a JSON object, or a 400 that says what is wrong with it.

Beyond syntax, two things a JSON parser accepts are refused here, because what comes after
(templates, grammars, tokenizers, the audit log) cannot take them:

- nesting deeper than `MAX_DEPTH` (a 100,000-deep `[[[[...` would otherwise end in a
  RecursionError somewhere downstream, or in the parser itself);
- text that is not Unicode: a lone UTF-16 surrogate (`"\\ud800"` written as a JSON escape,
  or its CESU-8 bytes), which no tokenizer or UTF-8 file can hold.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sovcli.server.errors import bad_request

MAX_DEPTH = 64
# A surrogate can only come from a \\uD800-\\uDFFF escape or from CESU-8 bytes ED A0..BF.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 (`APIError`)."""
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise _too_deep() from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_structure(body, surrogates=_MAYBE_SURROGATE.search(raw) is not None)
    return body


def check_structure(body: Any, *, surrogates: bool = True) -> None:
    """Raise a 400 if `body` nests deeper than `MAX_DEPTH` or (when `surrogates`) holds a
    lone surrogate in a key or a string. Iterative: no depth can overflow a stack."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        items: Any = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, _join(where, key)))
            elif surrogates and isinstance(value, str) and _SURROGATE.search(value):
                raise _not_unicode(_join(where, key), "the text")
            if surrogates and isinstance(key, str) and _SURROGATE.search(key):
                raise _not_unicode(where or "the body", "a key")


def _join(where: str, key: str | int) -> str:
    """The JSON path of `key` inside `where` (e.g. `messages[0].content`)."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    shown = key if key.isidentifier() and len(key) <= 40 else json.dumps(key)[:40]
    return f"{where}.{shown}" if where else shown


def _too_deep() -> Exception:
    return bad_request(
        f"the request body nests JSON arrays or objects more than {MAX_DEPTH} levels deep"
    )


def _not_unicode(where: str, what: str) -> Exception:
    return bad_request(
        f"{what} at {where} holds a lone UTF-16 surrogate (e.g. \\ud800 without its pair), "
        "which is not valid Unicode; send valid UTF-8 text",
        param=where.split(".", 1)[0].split("[", 1)[0] or None,
    )
