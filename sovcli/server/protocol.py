"""Validation of OpenAI request bodies into plain data the handlers use.

Every wrong parameter becomes a 400 in OpenAI's shape naming the parameter. Unknown fields
are ignored (clients send many), except those that would silently change the meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sovcli.engine.types import SamplingParams
from sovcli.server.errors import bad_request
from sovcli.server.settings import Limits

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20


@dataclass
class GenerationOptions:
    """What chat and text completions share: sampling, limits, streaming, logprobs."""

    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int
    sampling: SamplingParams
    stop: list[str]
    logprobs: bool
    top_logprobs: int

    @property
    def logprobs_top(self) -> int | None:
        """How many alternatives to report per token; None when logprobs are not asked for."""
        return self.top_logprobs if self.logprobs else None


@dataclass
class ChatRequest:
    """A validated `/v1/chat/completions` body."""

    options: GenerationOptions
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"  # "none" | "auto" | "required" | "function:<name>"
    response_format: dict[str, Any] | None = None


@dataclass
class CompletionRequest:
    """A validated `/v1/completions` body."""

    options: GenerationOptions
    prompt: str | list[int]
    echo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbeddingRequest:
    """A validated `/v1/embeddings` body."""

    model: str | None
    inputs: list[str] | list[list[int]]
    encoding_format: str  # "float" | "base64"
    dimensions: int | None


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number", param=name)
    if not lo <= value <= hi:
        raise bad_request(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def _integer(body: dict[str, Any], name: str, lo: int, hi: int, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad_request(f"'{name}' must be an integer", param=name)
    if not lo <= value <= hi:
        raise bad_request(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false", param=name)
    return value


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise bad_request("'model' must be a non-empty string", param="model")
    return model


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or not all(isinstance(s, str) and s for s in stop)
        or len(stop) > MAX_STOP_SEQUENCES
    ):
        raise bad_request(
            f"'stop' must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings",
            param="stop",
        )
    return list(stop)


def generation_options(body: dict[str, Any], limits: Limits, *, chat: bool) -> GenerationOptions:
    """Parse what chat and text completions share."""
    n = _integer(body, "n", 1, 1_000_000, 1)
    if n != 1:
        raise bad_request("only n=1 is supported", param="n")
    if not chat:
        best_of = _integer(body, "best_of", 1, 1_000_000, 1)
        if best_of != 1:
            raise bad_request("only best_of=1 is supported", param="best_of")
    max_tokens = _integer(body, "max_tokens", 1, 1 << 31, None)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 31, None)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens is {max_tokens}, above this server's limit of {limits.max_tokens}",
            param="max_tokens",
        )
    stream = _boolean(body, "stream", False)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise bad_request("'stream_options' must be an object", param="stream_options")
        include_usage = _boolean(stream_options, "include_usage", False)
    defaults = SamplingParams()
    seed = _integer(body, "seed", -(1 << 63), (1 << 64) - 1, None)
    if seed is not None:
        seed &= 0xFFFFFFFF
    sampling = SamplingParams(
        temperature=float(_number(body, "temperature", 0.0, 2.0, defaults.temperature)),
        top_p=float(_number(body, "top_p", 0.0, 1.0, defaults.top_p)),
        top_k=int(_integer(body, "top_k", 0, 1_000_000, defaults.top_k)),
        min_p=float(_number(body, "min_p", 0.0, 1.0, defaults.min_p)),
        repeat_penalty=float(_number(body, "repeat_penalty", 0.0, 10.0, defaults.repeat_penalty)),
        presence_penalty=float(_number(body, "presence_penalty", -2.0, 2.0, 0.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", -2.0, 2.0, 0.0)),
        seed=seed,
    )
    if chat:
        logprobs = _boolean(body, "logprobs", False)
        top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
        if top_logprobs and not logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        count = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS, None)
        logprobs, top_logprobs = count is not None, count or 0
    return GenerationOptions(
        model=_model(body),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens if max_tokens is not None else limits.max_tokens,
        sampling=sampling,
        stop=_stop(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _message_text(content: Any, index: int) -> str | None:
    """A message's content as text (OpenAI also allows a list of text parts)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(
                    f"messages[{index}]: only text content parts are supported", param="messages"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"messages[{index}]: a text part needs 'text'", param="messages")
            texts.append(text)
        return "".join(texts)
    raise bad_request(f"messages[{index}].content must be a string or a list", param="messages")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list", param="messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise bad_request(
                f"messages[{index}].role must be system, user, assistant or tool",
                param="messages",
            )
        out: dict[str, Any] = {
            "role": role,
            "content": _message_text(message.get("content"), index),
        }
        tool_calls = message.get("tool_calls")
        if role == "assistant" and tool_calls:
            if not isinstance(tool_calls, list):
                raise bad_request(f"messages[{index}].tool_calls must be a list", param="messages")
            out["tool_calls"] = tool_calls
        if role == "tool":
            out["tool_call_id"] = message.get("tool_call_id")
        if out["content"] is None and not out.get("tool_calls"):
            if role != "assistant":
                raise bad_request(f"messages[{index}] has no content", param="messages")
            out["content"] = ""
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
        messages.append(out)
    return messages


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request(
            "'response_format.type' must be text, json_object or json_schema",
            param="response_format",
        )
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_request(
                "'response_format.json_schema' must be an object with a 'schema' object",
                param="response_format",
            )
        return {"type": "json_schema", "schema": spec.get("schema") or {"type": "object"}}
    return {"type": "json_object"}


def chat_request(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """Parse a `/v1/chat/completions` body."""
    from sovcli.server.tools import normalize_tool_choice, normalize_tools

    options = generation_options(body, limits, chat=True)
    tools = normalize_tools(body.get("tools"))
    return ChatRequest(
        options=options,
        messages=_messages(body),
        tools=tools,
        tool_choice=normalize_tool_choice(body.get("tool_choice"), tools),
        response_format=_response_format(body),
    )


def completion_request(body: dict[str, Any], limits: Limits) -> CompletionRequest:
    """Parse a `/v1/completions` body."""
    options = generation_options(body, limits, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad_request(
                "'prompt' must be a string, or one list of token ids (one prompt per request)",
                param="prompt",
            )
    elif not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", param="prompt")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported", param="suffix")
    return CompletionRequest(options=options, prompt=prompt, echo=_boolean(body, "echo", False))


def embedding_request(body: dict[str, Any], limits: Limits) -> EmbeddingRequest:
    """Parse a `/v1/embeddings` body."""
    raw = body.get("input")
    if isinstance(raw, str) or (
        isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
    ):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise bad_request("'input' must be a string or a non-empty list", param="input")
    if len(raw) > limits.max_embedding_inputs:
        raise bad_request(
            f"at most {limits.max_embedding_inputs} inputs per request", param="input"
        )
    for item in raw:
        ok = isinstance(item, str) or (
            isinstance(item, list) and item and all(isinstance(t, int) for t in item)
        )
        if not ok:
            raise bad_request("each input must be a string or a list of token ids", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be float or base64", param="encoding_format")
    return EmbeddingRequest(
        model=_model(body),
        inputs=raw,
        encoding_format=fmt,
        dimensions=_integer(body, "dimensions", 1, 1 << 20, None),
    )
