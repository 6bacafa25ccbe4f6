"""Validation of OpenAI request bodies into plain data the handlers use.

Every wrong parameter becomes a 400 in OpenAI's shape naming the parameter. Unknown fields
are ignored (clients send many), except those that would silently change the meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sovcli.engine.types import SamplingParams
from sovcli.server import validate as v
from sovcli.server.errors import bad_request
from sovcli.server.settings import Limits

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
    n: int = 1  # choices, decoded as parallel sequences

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
    prompt_param: str = "messages"  # what a context overflow error names
    format_param: str = "response_format"  # what a grammar error names


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


def generation_options(body: dict[str, Any], limits: Limits, *, chat: bool) -> GenerationOptions:
    """Parse what chat and text completions share."""
    n = v.choices(body)
    if not chat:
        best_of = v.integer(body, "best_of", 1, v.MAX_CHOICES, 1)
        if best_of != 1:
            raise bad_request("only best_of=1 is supported", param="best_of")
    max_tokens = v.integer(body, "max_tokens", 1, 1 << 31, None)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = v.integer(body, "max_completion_tokens", 1, 1 << 31, None)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens is {max_tokens}, above this server's limit of {limits.max_tokens}",
            param="max_tokens",
        )
    stream = v.boolean(body, "stream", False)
    stream_options = v.obj(body, "stream_options") or {}
    include_usage = v.boolean(stream_options, "include_usage", False)
    if chat:
        logprobs = v.boolean(body, "logprobs", False)
        top_logprobs = v.integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
        if top_logprobs and not logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        count = v.integer(body, "logprobs", 0, MAX_TOP_LOGPROBS, None)
        logprobs, top_logprobs = count is not None, count or 0
    return GenerationOptions(
        model=v.model(body),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens if max_tokens is not None else limits.max_tokens,
        sampling=sampling_params(body),
        stop=v.stop(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        n=n,
    )


def sampling_params(body: dict[str, Any]) -> SamplingParams:
    """The sampling fields of a body. `top_p: 0` (or a temperature of 0) means greedy."""
    defaults = SamplingParams()
    temperature = float(v.number(body, "temperature", 0.0, 2.0, defaults.temperature))
    top_p = float(v.number(body, "top_p", 0.0, 1.0, defaults.top_p))
    if top_p == 0.0:  # OpenAI accepts it: only the most likely token is left
        temperature, top_p = 0.0, 1.0
    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=int(v.integer(body, "top_k", 0, 1_000_000, defaults.top_k)),
        min_p=float(v.number(body, "min_p", 0.0, 1.0, defaults.min_p)),
        repeat_penalty=float(v.number(body, "repeat_penalty", 0.01, 10.0, defaults.repeat_penalty)),
        presence_penalty=float(v.number(body, "presence_penalty", -2.0, 2.0, 0.0)),
        frequency_penalty=float(v.number(body, "frequency_penalty", -2.0, 2.0, 0.0)),
        seed=v.seed(body),
        logit_bias=v.logit_bias(body),
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
            out["tool_calls"] = _tool_calls(tool_calls, index)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise bad_request(f"messages[{index}].tool_call_id must be a string", "messages")
            out["tool_call_id"] = call_id
        if out["content"] is None and not out.get("tool_calls"):
            if role != "assistant":
                raise bad_request(f"messages[{index}] has no content", param="messages")
            out["content"] = ""
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
        messages.append(out)
    return messages


def _tool_calls(raw: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`: each `{"id", "type", "function": {"name",
    "arguments"}}` with a string name and arguments as a JSON string or an object."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(raw, list):
        raise bad_request(f"{where} must be a list", param="messages")
    for position, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        ok = (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments", ""), (str, dict))
            and isinstance(call.get("id", ""), (str, type(None)))
        )
        if not ok:
            raise bad_request(
                f"{where}[{position}] must be {{'id', 'type': 'function', 'function': "
                "{'name', 'arguments'}}",
                param="messages",
            )
    return raw


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
        if v.token_ids(prompt) is None:
            raise bad_request(
                "'prompt' must be a string, or one list of token ids (one prompt per request)",
                param="prompt",
            )
    elif not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", param="prompt")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported", param="suffix")
    return CompletionRequest(options=options, prompt=prompt, echo=v.boolean(body, "echo", False))


def embedding_request(body: dict[str, Any], limits: Limits) -> EmbeddingRequest:
    """Parse a `/v1/embeddings` body (token ids are checked against the vocabulary later)."""
    raw = body.get("input")
    if isinstance(raw, str) or v.token_ids(raw) is not None:
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise bad_request("'input' must be a string or a non-empty list", param="input")
    if len(raw) > limits.max_embedding_inputs:
        raise bad_request(
            f"at most {limits.max_embedding_inputs} inputs per request", param="input"
        )
    for item in raw:
        if not isinstance(item, str) and v.token_ids(item) is None:
            raise bad_request("each input must be a string or a list of token ids", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be float or base64", param="encoding_format")
    return EmbeddingRequest(
        model=v.model(body),
        inputs=raw,
        encoding_format=fmt,
        dimensions=v.integer(body, "dimensions", 1, 1 << 20, None),
    )
