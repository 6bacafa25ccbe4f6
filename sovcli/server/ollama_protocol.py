"""Validation of Ollama request bodies (`/api/chat`, `/api/generate`, `/api/embed`, ...).

Values pass the same checks as the OpenAI routes' (`sovcli.server.validate`); what cannot
be honoured is refused with a 400 rather than ignored: images, a template override,
`suffix`, `context`, thinking, and sampling options sovcli has no sampler for
(mirostat, typical_p, tfs_z). Options that only tune performance on Ollama's side
(`num_thread`, `num_gpu`, `use_mmap`...) are accepted and ignored: the server's own settings
decide those.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sovcli.engine.types import SamplingParams
from sovcli.server import validate as v
from sovcli.server.durations import DurationError, parse_duration
from sovcli.server.errors import bad_request
from sovcli.server.settings import Limits

DEFAULT = object()  # keep_alive not given: the server's --keep-alive
PERFORMANCE_OPTIONS = frozenset(
    {
        "num_thread",
        "num_gpu",
        "main_gpu",
        "num_batch",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "num_keep",
        "penalize_newline",
    }
)
# Options with no sampler here: refused unless they hold their "off" value.
UNSUPPORTED_OPTIONS = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0}
MIROSTAT_TUNING = frozenset({"mirostat_eta", "mirostat_tau"})
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class OllamaOptions:
    """`options` as the engine takes them."""

    sampling: SamplingParams
    max_tokens: int
    stop: list[str] = field(default_factory=list)


@dataclass
class OllamaGeneration:
    """A validated `/api/chat` or `/api/generate` body."""

    model: str
    stream: bool
    options: OllamaOptions
    keep_alive: Any  # seconds, None (forever) or DEFAULT
    format: Any = None  # None | "json" | a JSON schema (dict)
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat
    tools: list[dict[str, Any]] | None = None  # chat: OpenAI-shaped function tools
    prompt: str = ""  # generate
    system: str | None = None  # generate
    raw: bool = False  # generate: the prompt as is, no chat template


@dataclass
class OllamaEmbed:
    """A validated `/api/embed` (or legacy `/api/embeddings`) body."""

    model: str
    inputs: list[str]
    keep_alive: Any
    truncate: bool = True
    dimensions: int | None = None


def model_name(body: dict[str, Any]) -> str:
    """`model`: required on every Ollama route."""
    name = v.model(body)
    if name is None:
        raise bad_request("'model' is required", param="model")
    return name


def keep_alive(body: dict[str, Any]) -> Any:
    """`keep_alive` as seconds, None (forever), or DEFAULT when absent."""
    if body.get("keep_alive") is None:
        return DEFAULT
    try:
        return parse_duration(body["keep_alive"])
    except DurationError as exc:
        raise bad_request(f"'keep_alive' must be {exc}", param="keep_alive") from exc


def options(body: dict[str, Any], limits: Limits) -> OllamaOptions:
    """`options` checked and turned into sampling settings and a token limit."""
    raw = v.obj(body, "options") or {}
    given = {k: val for k, val in raw.items() if val is not None}
    _refuse_unsupported(given)
    known = {"temperature", "top_p", "top_k", "min_p", "seed", "num_predict", "stop", "num_ctx"}
    known |= {"repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty"}
    unknown = sorted(set(given) - known - PERFORMANCE_OPTIONS - set(UNSUPPORTED_OPTIONS))
    unknown = [k for k in unknown if k not in MIROSTAT_TUNING]
    if unknown:
        raise bad_request(f"unknown option '{unknown[0][:60]}'", param="options")
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=float(v.number(given, "temperature", 0.0, 2.0, defaults.temperature)),
        top_p=float(v.number(given, "top_p", 0.0, 1.0, defaults.top_p)),
        top_k=int(v.integer(given, "top_k", 0, 1_000_000, defaults.top_k)),
        min_p=float(v.number(given, "min_p", 0.0, 1.0, defaults.min_p)),
        repeat_penalty=float(v.number(given, "repeat_penalty", 0.01, 10.0, 1.0)),
        repeat_last_n=int(v.integer(given, "repeat_last_n", 0, 1 << 20, defaults.repeat_last_n)),
        presence_penalty=float(v.number(given, "presence_penalty", -2.0, 2.0, 0.0)),
        frequency_penalty=float(v.number(given, "frequency_penalty", -2.0, 2.0, 0.0)),
        seed=v.seed(given),
    )
    if sampling.top_p == 0.0:  # as on the OpenAI routes: nothing but the top token, greedy
        sampling = replace(sampling, top_p=1.0, temperature=0.0)
    return OllamaOptions(
        sampling=sampling, max_tokens=_num_predict(given, limits), stop=v.stop(given)
    )


def _refuse_unsupported(given: dict[str, Any]) -> None:
    for name, off in UNSUPPORTED_OPTIONS.items():
        if name in given and given[name] != off:
            raise bad_request(
                f"option '{name}' is not supported by this server (use temperature, top_p, "
                "top_k or min_p)",
                param="options",
            )


def _num_predict(given: dict[str, Any], limits: Limits) -> int:
    """`num_predict`: -1 (until the end, capped) and -2 (fill the context) give the
    server's --max-tokens; above it is a 400, as on the OpenAI routes."""
    value = v.integer(given, "num_predict", -2, 1 << 31, None)
    if value is None or value < 0:
        return limits.max_tokens
    if value == 0:
        raise bad_request("'num_predict' must be at least 1 (or -1)", param="num_predict")
    if value > limits.max_tokens:
        raise bad_request(
            f"num_predict is {value}, above this server's limit of {limits.max_tokens}",
            param="num_predict",
        )
    return value


def num_ctx(body: dict[str, Any]) -> int | None:
    """`options.num_ctx` (checked against the loaded model's context by the handler)."""
    raw = v.obj(body, "options") or {}
    return v.integer(raw, "num_ctx", 1, 1 << 31, None)


def response_format(body: dict[str, Any]) -> Any:
    """`format`: absent, "json", or a JSON schema object."""
    fmt = body.get("format")
    if fmt is None or fmt == "":
        return None
    if fmt == "json" or isinstance(fmt, dict):
        return fmt
    raise bad_request("'format' must be \"json\" or a JSON schema object", param="format")


def _refuse(body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = body.get(name)
        if value not in (None, "", [], False):
            raise bad_request(f"'{name}' is not supported by this server", param=name)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("'messages' must be a list", param="messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(
                f"messages[{index}].role must be system, user, assistant or tool",
                param="messages",
            )
        _refuse(message, ("images", "thinking"))
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad_request(f"messages[{index}].content must be a string", param="messages")
        out: dict[str, Any] = {"role": role, "content": content}
        calls = message.get("tool_calls")
        if calls:
            out["tool_calls"] = _tool_calls(calls, index)
        if role == "tool" and isinstance(message.get("tool_name"), str):
            out["name"] = message["tool_name"]
        messages.append(out)
    return messages


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant turn's `tool_calls` (`[{"function": {"name", "arguments": {...}}}]`)."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise bad_request(f"{where} must be a list", param="messages")
    checked = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, (dict, str)):
            raise bad_request(
                f"{where}: each call needs function.name and function.arguments",
                param="messages",
            )
        checked.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return checked


def _generation(body: dict[str, Any], limits: Limits, **fields: Any) -> OllamaGeneration:
    """What chat and generate share: model, streaming (on unless `"stream": false`, as
    Ollama does), options, keep-alive and format."""
    return OllamaGeneration(
        model=model_name(body),
        stream=v.boolean(body, "stream", True),
        options=options(body, limits),
        keep_alive=keep_alive(body),
        format=response_format(body),
        **fields,
    )


def chat_body(body: dict[str, Any], limits: Limits) -> OllamaGeneration:
    """Parse an `/api/chat` body (tools as on the OpenAI route: the same checks)."""
    from sovcli.server.tools import normalize_tools

    _refuse(body, ("think",))
    return _generation(
        body, limits, messages=_messages(body), tools=normalize_tools(body.get("tools"))
    )


def generate_body(body: dict[str, Any], limits: Limits) -> OllamaGeneration:
    """Parse an `/api/generate` body. An empty prompt only loads (or, with keep_alive 0,
    unloads) the model, as Ollama does."""
    _refuse(body, ("images", "suffix", "template", "context", "think"))
    return _generation(
        body,
        limits,
        prompt=v.text(body, "prompt", "") or "",
        system=v.text(body, "system"),
        raw=v.boolean(body, "raw", False),
    )


def embed_body(body: dict[str, Any], limits: Limits, *, legacy: bool = False) -> OllamaEmbed:
    """Parse `/api/embed` (`input`: a string or strings) or `/api/embeddings` (`prompt`)."""
    field_name = "prompt" if legacy else "input"
    raw = body.get(field_name)
    inputs = [raw] if isinstance(raw, str) else None if legacy else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise bad_request(
            f"'{field_name}' must be a string"
            + ("" if legacy else " or a non-empty list of strings"),
            param=field_name,
        )
    if len(inputs) > limits.max_embedding_inputs:
        raise bad_request(
            f"at most {limits.max_embedding_inputs} inputs per request", param=field_name
        )
    return OllamaEmbed(
        model=model_name(body),
        inputs=inputs,
        keep_alive=keep_alive(body),
        truncate=v.boolean(body, "truncate", True),
        dimensions=v.integer(body, "dimensions", 1, 1 << 20, None),
    )
