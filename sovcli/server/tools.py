"""Function calling: validating `tools`, prompting for calls, parsing them back.

Models whose chat template knows tools get them through the template; for the others a
system message describes them in the Hermes format (`<tool_call>{json}</tool_call>`). Calls
are parsed from that format or from a bare `{"name": ..., "arguments": ...}` object; a
forced call (`tool_choice` "required" or a named function) is constrained by a grammar
built from the tools' parameter schemas, so even a small model produces a valid call.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from typing import Any

from sovcli.server.errors import bad_request

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_OPENERS = ("<tool_call>", "{")


def normalize_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Validate OpenAI `tools` and return them as `{"type": "function", "function": {...}}`."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list", param="tools")
    if not raw:
        return None
    tools = []
    for index, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise bad_request(
                f"tools[{index}] must be {{'type': 'function', 'function': {{...}}}}",
                param="tools",
            )
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(
                f"tools[{index}].function.name must be 1-64 letters, digits, '_' or '-'",
                param="tools",
            )
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise bad_request(
                f"tools[{index}].function.parameters must be a JSON schema", param="tools"
            )
        clean = {"name": name, "parameters": parameters}
        if isinstance(function.get("description"), str):
            clean["description"] = function["description"]
        tools.append({"type": "function", "function": clean})
    return tools


def normalize_tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> str:
    """`none` | `auto` | `required` | `function:<name>` (validated against `tools`)."""
    if raw is None:
        return "auto" if tools else "none"
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise bad_request(
                "'tool_choice' must be none, auto, required or a function", param="tool_choice"
            )
        if raw == "required" and not tools:
            raise bad_request("'tool_choice' is required but no tools are given", param="tools")
        return raw
    if isinstance(raw, dict):
        function = raw.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if raw.get("type") == "function" and isinstance(name, str):
            if not tools or name not in tool_names(tools):
                raise bad_request(
                    f"'tool_choice' names the function '{name}', which is not in 'tools'",
                    param="tool_choice",
                )
            return f"function:{name}"
    raise bad_request(
        "'tool_choice' must be none, auto, required or a function", param="tool_choice"
    )


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    """The function names offered."""
    return [t["function"]["name"] for t in tools]


def forced_call_schema(tools: list[dict[str, Any]], choice: str) -> dict[str, Any] | None:
    """The JSON schema a forced call must match, or None when the call is not forced."""
    if choice == "required":
        chosen = tools
    elif choice.startswith("function:"):
        wanted = choice.removeprefix("function:")
        chosen = [t for t in tools if t["function"]["name"] == wanted]
    else:
        return None
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"]["parameters"],
            },
            "required": ["name", "arguments"],
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def template_supports_tools(chat_template: str | None) -> bool:
    """Whether a GGUF chat template renders a `tools` variable."""
    return bool(chat_template) and "tools" in chat_template


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """Instructions (Hermes format) for models whose template does not handle tools."""
    listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You may call one of these functions to answer:\n<tools>\n"
        f"{listing}\n</tools>\n"
        "To call a function, reply with only:\n<tool_call>\n"
        '{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>'
    )


def prepare_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, native: bool
) -> list[dict[str, Any]]:
    """Messages ready for `render_chat`.

    With a tool-aware template (`native`), tool turns pass through (arguments as objects,
    as templates expect). Otherwise assistant calls become `<tool_call>` text, tool results
    become `<tool_response>` user turns, and the tools are described in the system message.
    """
    prepared: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if calls:
            if native:
                message["tool_calls"] = [_call_for_template(c) for c in calls]
            else:
                blocks = [
                    "<tool_call>\n"
                    + json.dumps(_call_for_template(c)["function"])
                    + "\n</tool_call>"
                    for c in calls
                ]
                message["content"] = ((message.get("content") or "") + "\n".join(blocks)).strip()
        if message["role"] == "tool" and not native:
            message = {
                "role": "user",
                "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>",
            }
        if not native:
            message.pop("tool_call_id", None)
        prepared.append(message)
    if tools and not native:
        instructions = tools_system_prompt(tools)
        if prepared and prepared[0]["role"] == "system":
            first = prepared[0]
            prepared[0] = {**first, "content": f"{first.get('content') or ''}\n\n{instructions}"}
        else:
            prepared.insert(0, {"role": "system", "content": instructions})
    return prepared


def _call_for_template(call: Any) -> dict[str, Any]:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return {
        "id": call.get("id") if isinstance(call, dict) else None,
        "type": "function",
        "function": {"name": function.get("name"), "arguments": arguments},
    }


def may_become_call(text: str) -> bool:
    """While streaming: could this output still turn out to be a tool call?"""
    head = text.lstrip()
    if not head:
        return True
    return any(head.startswith(o) or o.startswith(head) for o in _OPENERS)


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Tool calls in OpenAI's shape, or None when `text` is not a call to a known tool."""
    names = set(tool_names(tools))
    candidates = _TOOL_CALL_BLOCK.findall(text)
    if not candidates:
        stripped = text.strip()
        if stripped.startswith("```"):
            stripped = stripped.strip("`").removeprefix("json").strip()
        if not (stripped.startswith("{") and stripped.endswith("}")):
            return None
        candidates = [stripped]
    calls = []
    for candidate in candidates:
        obj = _json_object(candidate)
        if obj is None or obj.get("name") not in names:
            return None
        name = obj["name"]
        arguments = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _json_object(arguments)
        if not isinstance(arguments, dict):
            return None
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    return calls or None


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object, or None."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class HeldCall:
    """While a chat with tools streams: keeps text back while it may still be a tool call.

    A forced call (`tool_choice` "required" or a named function) is held to the end.
    """

    def __init__(self, tools: list[dict[str, Any]], forced: bool) -> None:
        self.tools = tools
        self.forced = forced
        self.holding = True
        self._parts: list[str] = []

    def feed(self, text: str) -> str:
        """Add a text delta; returns what may be shown now ("" while it is held)."""
        self._parts.append(text)
        if self.forced or may_become_call("".join(self._parts)):
            return ""
        self.holding = False
        released = "".join(self._parts)
        self._parts.clear()
        return released

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """At the end: the text still held, and the tool calls it holds (or None)."""
        held = "".join(self._parts)
        self._parts.clear()
        return held, (parse_tool_calls(held, self.tools) if held else None)
