"""The one validation layer: every value a request body gives passes through here before it
reaches the engine (and llama.cpp, which aborts the process on some bad input).

Two stages:

- `number`, `integer`, `boolean`, `text`, `token_ids`, `stop`, `choices`, `logit_bias`...
  parse one field of a JSON body (already checked for depth and Unicode by `jsonbody`) into
  plain Python values, or raise a 400 in OpenAI's shape naming the parameter. They refuse
  what JSON allows but no sampler can use: NaN and infinities, booleans for numbers, huge
  integers, empty or oversized lists, keys that are not token ids.
- `check_generation(gen, info, param)` checks a built `GenerationRequest` against the model
  that will run it, right before it is submitted: token ids inside the vocabulary (prompt
  and `logit_bias`), sampling values inside the ranges llama.cpp accepts, a grammar that is
  not empty. A grammar llama.cpp cannot parse is still found by llama.cpp; the handlers turn
  that into a 400 too.
"""

from __future__ import annotations

import math
from typing import Any

from sovcli.engine.types import GenerationRequest, ModelInfo
from sovcli.server.errors import bad_request

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 1000  # per stop string
MAX_CHOICES = 8  # `n`
MAX_LOGIT_BIAS = 1024  # entries
LOGIT_BIAS_RANGE = 100.0  # OpenAI's [-100, 100]
MAX_SEED = (1 << 64) - 1
MIN_SEED = -(1 << 63)


def number(body: dict[str, Any], name: str, lo: float, hi: float, default: Any) -> Any:
    """`body[name]` as a finite number in [lo, hi], or `default` when absent/null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"'{name}' must be a finite number, got {value}", param=name)
    if not lo <= value <= hi:
        raise bad_request(
            f"'{name}' must be between {lo} and {hi}, got {_short(value)}", param=name
        )
    return value


def integer(body: dict[str, Any], name: str, lo: int, hi: int, default: Any) -> Any:
    """`body[name]` as an integer in [lo, hi] (a float with no fraction counts)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise bad_request(f"'{name}' must be an integer", param=name)
    if not lo <= value <= hi:
        raise bad_request(
            f"'{name}' must be between {lo} and {hi}, got {_short(value)}", param=name
        )
    return value


def boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    """`body[name]` as true/false."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false", param=name)
    return value


def text(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """`body[name]` as a string (any length: the body cap bounds it)."""
    return _typed(body, name, str, "a string", default)


def obj(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """`body[name]` as a JSON object, or None when absent."""
    return _typed(body, name, dict, "an object", None)


def _typed(body: dict[str, Any], name: str, kind: type, what: str, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad_request(f"'{name}' must be {what}", param=name)
    return value


def model(body: dict[str, Any]) -> str | None:
    """The `model` field: a non-empty string, or None (the server's only model)."""
    value = body.get("model")
    if value is not None and (not isinstance(value, str) or not value):
        raise bad_request("'model' must be a non-empty string", param="model")
    return value


def stop(body: dict[str, Any]) -> list[str]:
    """`stop`: a string or up to `MAX_STOP_SEQUENCES` non-empty strings, each bounded."""
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value)
    ):
        raise bad_request(
            f"'stop' must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty "
            f"strings of at most {MAX_STOP_CHARS} characters",
            param="stop",
        )
    return list(value)


def choices(body: dict[str, Any]) -> int:
    """`n`: how many choices to generate (1 to `MAX_CHOICES`)."""
    return int(integer(body, "n", 1, MAX_CHOICES, 1))


def seed(body: dict[str, Any]) -> int | None:
    """`seed` folded to 32 bits (llama.cpp's sampler seed), or None."""
    value = integer(body, "seed", MIN_SEED, MAX_SEED, None)
    return None if value is None else value & 0xFFFFFFFF


def logit_bias(body: dict[str, Any]) -> dict[int, float] | None:
    """`logit_bias`: {"token id": bias in [-100, 100]}; ids are checked against the
    vocabulary later (`check_generation`), once the model is known."""
    raw = body.get("logit_bias")
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) > MAX_LOGIT_BIAS:
        raise bad_request(
            f"'logit_bias' must be an object of up to {MAX_LOGIT_BIAS} token ids to biases",
            param="logit_bias",
        )
    bias: dict[int, float] = {}
    for key, value in raw.items():
        key_text = key.strip()
        if not (key_text.isascii() and key_text.isdigit()) or len(key_text) > 10:
            raise bad_request(
                f"'logit_bias' keys must be token ids (non-negative integers), got {key[:20]!r}",
                param="logit_bias",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not -LOGIT_BIAS_RANGE <= value <= LOGIT_BIAS_RANGE
        ):
            raise bad_request(
                f"'logit_bias' values must be numbers between -100 and 100 (token {key_text})",
                param="logit_bias",
            )
        bias[int(key_text)] = float(value)
    return bias or None


def token_ids(value: Any) -> list[int] | None:
    """`value` as token ids when it is a non-empty list of integers, else None (ids are
    checked against the vocabulary by `vocabulary_ids` once the model is known)."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None
    return value


def vocabulary_ids(ids: list[int], n_vocab: int, param: str) -> None:
    """A 400 naming the first id outside the model's vocabulary."""
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise bad_request(
            f"token id {_short(bad)} is outside the vocabulary (0..{n_vocab - 1})", param=param
        )


def check_generation(gen: GenerationRequest, info: ModelInfo, param: str) -> None:
    """The last check before `engine.submit(gen)`: everything the engine would refuse or
    llama.cpp would abort on, as a 400 naming `param` (or the sampling parameter)."""
    if isinstance(gen.prompt, list):
        vocabulary_ids(gen.prompt, info.n_vocab, param)
    s = gen.sampling
    if s.logit_bias:
        vocabulary_ids(list(s.logit_bias), info.n_vocab, "logit_bias")
    if not math.isfinite(s.temperature) or s.temperature < 0:
        raise bad_request("'temperature' must be >= 0", param="temperature")
    if not 0.0 < s.top_p <= 1.0:
        raise bad_request("'top_p' must be between 0 and 1", param="top_p")
    if not 0.0 <= s.min_p <= 1.0:
        raise bad_request("'min_p' must be between 0 and 1", param="min_p")
    if not s.repeat_penalty > 0:
        raise bad_request("'repeat_penalty' must be > 0", param="repeat_penalty")
    if s.grammar is not None and not s.grammar.strip():
        raise bad_request("the grammar is empty", param="response_format")
    if gen.max_tokens is not None and gen.max_tokens < 0:
        raise bad_request("'max_tokens' must be >= 0", param="max_tokens")


def _short(value: Any) -> str:
    """A value for an error message, bounded (a 4,000-digit integer is not echoed)."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
