"""A created model's preset (`sovcli create`) as defaults for the requests that name it.

The preset fills in only what a request leaves out, before the body is parsed and checked
like any other: the sampling settings, the token limit (capped at the server's), the stop
strings, and the system prompt when the conversation has none. Each API names these its
own way: OpenAI chat and text completions, the Responses API, and Ollama's chat and
generate (which take them in `options`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sovcli.store.preset import Preset

T = TypeVar("T")

OPENAI_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)
RESPONSES_KEYS = ("temperature", "top_p")
OLLAMA_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed")


def _fill(target: dict[str, Any], keys: tuple[str, ...], preset: Preset) -> None:
    for key in keys:
        if key in preset.parameters and target.get(key) is None:
            target[key] = preset.parameters[key]


def _max_tokens(preset: Preset, limit: int) -> int | None:
    value = preset.parameters.get("max_tokens")
    return min(int(value), limit) if value else None


def _with_system(messages: Any, system: str | None) -> Any:
    if not system or not isinstance(messages, list):
        return messages
    roles = {
        m.get("role") for m in messages if isinstance(m, dict) and isinstance(m.get("role"), str)
    }
    if roles & {"system", "developer"}:
        return messages
    return [{"role": "system", "content": system}, *messages]


def with_preset(body: Any, preset: Preset | None, dialect: str, max_tokens_limit: int) -> Any:
    """`body` with `preset`'s values where it sets none. `dialect` is "chat", "completion",
    "responses", "ollama-chat" or "ollama-generate"; anything else leaves the body as is."""
    if preset is None or not isinstance(body, dict):
        return body
    out = dict(body)
    limit = _max_tokens(preset, max_tokens_limit)
    if dialect in ("chat", "completion"):
        _fill(out, OPENAI_KEYS, preset)
        if limit and out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
            out["max_tokens"] = limit
        if preset.stop and out.get("stop") is None:
            out["stop"] = list(preset.stop)
        if dialect == "chat":
            out["messages"] = _with_system(out.get("messages"), preset.system)
    elif dialect == "responses":
        _fill(out, RESPONSES_KEYS, preset)
        if limit and out.get("max_output_tokens") is None:
            out["max_output_tokens"] = limit
        if preset.system and out.get("instructions") is None:
            out["instructions"] = preset.system
    elif dialect in ("ollama-chat", "ollama-generate"):
        options = out.get("options")
        if options is not None and not isinstance(options, dict):
            return body  # the parser reports it
        options = dict(options or {})
        _fill(options, OLLAMA_KEYS, preset)
        if limit and options.get("num_predict") is None:
            options["num_predict"] = limit
        if preset.stop and options.get("stop") is None:
            options["stop"] = list(preset.stop)
        out["options"] = options
        if dialect == "ollama-chat":
            out["messages"] = _with_system(out.get("messages"), preset.system)
        elif preset.system and out.get("system") is None:
            out["system"] = preset.system
    return out


PARSER_DIALECTS = {
    "chat_request": "chat",
    "completion_request": "completion",
    "responses_request": "responses",
}
"""The OpenAI body parsers (by name) whose requests take a preset, and their dialect."""


def preset_parser(
    registry: Any, parse: Callable[[Any, Any], T], dialect: str
) -> Callable[[Any, Any], T]:
    """`parse(body, limits)` that first fills in the preset of the model the body names."""

    def parsed(body: Any, limits: Any) -> T:
        preset = preset_for(registry, body)
        return parse(with_preset(body, preset, dialect, limits.max_tokens), limits)

    return parsed


def preset_for(registry: Any, body: Any) -> Preset | None:
    """The preset of the model a request body names (None: no such model, or no preset)."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        return None
    handle = registry.find(model)
    return getattr(handle.served, "preset", None) if handle is not None else None
