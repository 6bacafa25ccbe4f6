"""Rendering chat messages into a prompt with the model's own template (sandboxed jinja2)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from sovcli.engine.types import ChatMessage
from sovcli.errors import UsageError

# Used when the GGUF has no template or its template cannot be compiled: ChatML, which most
# instruction-tuned models of this size understand, rendered by the same sandbox.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise UsageError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError:
        return None


def message_dicts(messages: list[ChatMessage] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as plain dicts (None fields dropped), the shape templates expect."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            item: dict[str, Any] = {"role": message.role, "content": message.content}
            if message.name is not None:
                item["name"] = message.name
            if message.tool_calls is not None:
                item["tool_calls"] = message.tool_calls
            if message.tool_call_id is not None:
                item["tool_call_id"] = message.tool_call_id
        elif isinstance(message, dict):
            if "role" not in message:
                raise UsageError("a chat message has no 'role'")
            item = dict(message)
        else:
            raise UsageError(f"a chat message must be a dict, not {type(message).__name__}")
        out.append(item)
    return out


def render(
    template: str | None,
    messages: list[ChatMessage] | list[dict[str, Any]],
    *,
    bos_token: str | None,
    eos_token: str | None,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages`, using `template` or the ChatML fallback."""
    from jinja2 import TemplateError

    compiled = _compile(template) if template else None
    if compiled is None:
        compiled = _compile(FALLBACK_TEMPLATE)
    variables: dict[str, Any] = {
        "messages": message_dicts(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "date_string": datetime.now().strftime("%d %b %Y"),
    }
    if tools:
        variables["tools"] = tools
    try:
        return compiled.render(**variables)
    except UsageError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError) as exc:
        raise UsageError(
            f"the model's chat template failed: {exc}",
            hint="Send a plain completion prompt instead, or use a model with a working template.",
        ) from exc
