"""OpenAI's Responses API (`POST /v1/responses`), streamed or not, over the chat machinery.

A request is turned into a chat request (`instructions` as the system message, `input` text
or items: messages, `function_call` and `function_call_output`), decoded like a chat
completion, and answered as a `response` object: output items (an assistant `message` with
`output_text`, or `function_call`s), `usage` in the Responses names, `status` `incomplete`
when `max_output_tokens` cut it. Streams carry the typed events the SDKs read
(`response.created` ... `response.output_text.delta` ... `response.completed`), each with
its `sequence_number`.

Nothing is stored: `store` is accepted but every response says `"store": false`, and
`previous_response_id` is refused (send the conversation as input items instead). Keeping
responses would grow memory with every request, and a conversation sent in full needs none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sovcli.engine.types import GenerationResult, TokenLogprob
from sovcli.server import validate as v
from sovcli.server.errors import bad_request
from sovcli.server.protocol import ChatRequest, GenerationOptions, chat_request
from sovcli.server.responses import Choice, new_id
from sovcli.server.settings import Limits

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = ("input_text", "output_text", "text")


@dataclass
class ResponsesRequest:
    """A validated `/v1/responses` body: the chat request it becomes, and what the response
    echoes back (instructions, sampling, tools, text format...)."""

    chat: ChatRequest
    echo: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> GenerationOptions:
        """The generation options (what the router reads)."""
        return self.chat.options


def responses_request(body: dict[str, Any], limits: Limits) -> ResponsesRequest:
    """Parse a `/v1/responses` body into a chat request (400s name Responses parameters)."""
    if body.get("previous_response_id") is not None:
        raise bad_request(
            "'previous_response_id' is not supported: this server stores no responses; "
            "send the earlier turns as input items",
            param="previous_response_id",
        )
    v.boolean(body, "store", False)
    instructions = v.text(body, "instructions")
    max_output = v.integer(body, "max_output_tokens", 1, limits.max_tokens, None)
    messages = _input_messages(body.get("input"))
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise bad_request("'input' must not be empty", param="input")
    tools = _tools(body.get("tools"))
    chat_body: dict[str, Any] = {
        "model": body.get("model"),
        "stream": body.get("stream"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_tokens": max_output,
        "messages": messages,
        "tools": tools,
        "tool_choice": _tool_choice(body.get("tool_choice")),
        "response_format": _text_format(body.get("text")),
    }
    for name in ("seed", "stop", "top_k", "min_p", "presence_penalty", "frequency_penalty"):
        chat_body[name] = body.get(name)
    chat = chat_request(chat_body, limits)
    chat.prompt_param, chat.format_param = "input", "text"
    sampling = chat.options.sampling
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "text": {"format": _echo_format(body.get("text"))},
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": True,
    }
    return ResponsesRequest(chat, echo)


def _input_messages(raw: Any) -> list[dict[str, Any]]:
    """`input` as chat messages: a string is one user turn; items become turns in order
    (consecutive `function_call`s one assistant turn with several calls)."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise bad_request("'input' must be a string or a list of items", param="input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            role = _ROLES.get(role) if isinstance(role, str) else None
            if role is None:
                raise bad_request(
                    f"{where}.role must be user, system, developer or assistant", param="input"
                )
            messages.append({"role": role, "content": _content_text(item.get("content"), where)})
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, (str, list)):
                raise bad_request(f"{where} needs 'call_id' and 'output' (a string)", param="input")
            text = output if isinstance(output, str) else _content_text(output, where)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # another model's reasoning summary: nothing this model can use
        else:
            raise bad_request(
                f"{where}.type must be message, function_call or function_call_output",
                param="input",
            )
    return messages


def _content_text(content: Any, where: str) -> str:
    """A message's content (a string, or text parts) as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts", param="input")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
            raise bad_request(f"{where}: only text content parts are supported", param="input")
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{where}: a text part needs 'text'", param="input")
        texts.append(text)
    return "".join(texts)


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A `function_call` input item as a chat `tool_calls` entry."""
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not all(isinstance(x, str) for x in (call_id, name, arguments)):
        raise bad_request(
            f"{where} needs 'call_id', 'name' and 'arguments' (strings)", param="input"
        )
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    """Responses tools (`{"type": "function", "name", "parameters"}`) in the chat shape."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list", param="tools")
    tools = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(
                f"tools[{index}]: only function tools are supported on this server",
                param="tools",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    """A Responses `tool_choice` in the chat shape."""
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    return raw


def _text_format(raw: Any) -> dict[str, Any] | None:
    """`text.format` as a chat `response_format`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("'text' must be an object", param="text")
    fmt = raw.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request(
            "'text.format.type' must be text, json_object or json_schema", param="text"
        )
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise bad_request("'text.format.schema' must be a JSON schema object", param="text")
    return {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": schema}}


def _echo_format(raw: Any) -> dict[str, Any]:
    fmt = raw.get("format") if isinstance(raw, dict) else None
    return fmt if isinstance(fmt, dict) else {"type": "text"}


# ---- output ----------------------------------------------------------------------------
def _event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _usage(result: GenerationResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "input_tokens": result.prompt_tokens,
        "input_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
        "output_tokens": result.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "fc_" + call["id"].removeprefix("call_"),
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
    }


class ResponsesFormat:
    """Builds a Responses body, or its stream of events (the handlers' format interface:
    `opening`, `text_chunk`, `tool_calls_chunk`, `closing`, `failure`, `body`)."""

    n = 1

    def __init__(self, model: str, echo: dict[str, Any]) -> None:
        self.id = new_id("resp", "_")
        self.created = int(time.time())
        self.model = model
        self.echo = echo
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items, in order
        self.message_id = new_id("msg", "_")
        self.message_index: int | None = None  # output index of the open message
        self.parts: list[str] = []
        self._delta_head = (
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            f'"item_id":"{self.message_id}","content_index":0,"delta":'
        )

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def _emit(self, kind: str, **payload: Any) -> bytes:
        return _event(kind, {**payload, "sequence_number": self._next()})

    def response(
        self, status: str, result: GenerationResult | None = None, error: Any = None
    ) -> dict[str, Any]:
        """The `response` object in its current state."""
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": list(self.output),
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "truncation": "disabled",
            "usage": _usage(result),
            "user": None,
            **self.echo,
        }

    # ---- stream ----------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        """`response.created` and `response.in_progress`."""
        state = self.response("in_progress")
        return [
            self._emit("response.created", response=state),
            self._emit("response.in_progress", response=state),
        ]

    def _open_message(self) -> list[bytes]:
        self.message_index = len(self.output)
        added = _message_item(self.message_id, "", "in_progress")
        added["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._emit("response.output_item.added", output_index=self.message_index, item=added),
            self._emit(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=self.message_index,
                content_index=0,
                part=part,
            ),
        ]

    def text_chunk(
        self, text: str, logprobs: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> bytes:
        """A `response.output_text.delta` (the message item is opened before the first)."""
        opened = b"".join(self._open_message()) if self.message_index is None else b""
        self.parts.append(text)
        delta = json.dumps(text, ensure_ascii=False)
        return (
            opened
            + f'{self._delta_head}{delta},"output_index":{self.message_index},'
            f'"logprobs":[],"sequence_number":{self._next()}}}\n\n'.encode()
        )

    def _close_message(self) -> list[bytes]:
        if self.message_index is None:
            return []
        text = "".join(self.parts)
        item = _message_item(self.message_id, text, "completed")
        where = {"item_id": self.message_id, "output_index": self.message_index}
        events = [
            self._emit(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            ),
            self._emit(
                "response.content_part.done", **where, content_index=0, part=item["content"][0]
            ),
            self._emit("response.output_item.done", output_index=self.message_index, item=item),
        ]
        self.output.insert(self.message_index, item)
        return events

    def tool_calls_chunk(self, calls: list[dict[str, Any]], index: int = 0) -> bytes:
        """Each call: item added, its arguments (one delta), done."""
        events = []
        for call in calls:
            item = _call_item(call)
            at = len(self.output) + (self.message_index is not None)
            started = {**item, "status": "in_progress", "arguments": ""}
            where = {"item_id": item["id"], "output_index": at}
            events += [
                self._emit("response.output_item.added", output_index=at, item=started),
                self._emit(
                    "response.function_call_arguments.delta", **where, delta=item["arguments"]
                ),
                self._emit(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                ),
                self._emit("response.output_item.done", output_index=at, item=item),
            ]
            self.output.append(item)
        return b"".join(events)

    def closing(
        self, finishes: list[str], results: list[GenerationResult], include_usage: bool
    ) -> list[bytes]:
        """Close the message (an empty one when nothing else was said), then
        `response.completed` (or `response.incomplete` when `max_output_tokens` cut it)."""
        events: list[bytes] = []
        if self.message_index is None and not self.output:
            events += self._open_message()
        events += self._close_message()
        status = "incomplete" if finishes[0] == "length" else "completed"
        final = self.response(status, results[0])
        events.append(self._emit(f"response.{status}", response=final))
        return events

    def failure(self, message: str) -> list[bytes]:
        """`response.failed` with the error."""
        error = {"code": "server_error", "message": message}
        return [self._emit("response.failed", response=self.response("failed", error=error))]

    # ---- whole body ------------------------------------------------------------------
    def body(self, choices: list[Choice]) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        choice = choices[0]
        if choice.tool_calls:
            self.output = [_call_item(call) for call in choice.tool_calls]
        else:
            self.output = [_message_item(self.message_id, choice.content or "", "completed")]
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        return self.response(status, choice.result)


class ResponsesEndpoint:
    """`POST /v1/responses` on the app's chat machinery (`handlers.Handlers`)."""

    def __init__(self, handlers: Any) -> None:
        self.handlers = handlers

    async def create(self, request: Request) -> Response:
        """POST /v1/responses"""
        parsed, handle, engine = await self.handlers.routed(request, responses_request)
        fmt = ResponsesFormat(parsed.options.model or handle.id, parsed.echo)
        return await self.handlers.run_chat(request, parsed.chat, handle, engine, fmt)
