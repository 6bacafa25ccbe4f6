"""A generation request as a JSON record, and back: what `audit replay` re-runs.

`request_params(request)` gives the JSON-ready parameters of a `GenerationRequest` (sampling,
limits, stop strings); an audit record that carries them, the model digest and the prompt
(with content logging on) can be replayed: `request_from_params(prompt, params)` rebuilds
the same request. Unknown keys are refused rather than ignored: a replay that silently
dropped a setting would compare outputs of two different requests.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from sovcli.engine.types import GenerationRequest, SamplingParams
from sovcli.errors import UsageError

_SAMPLING = {f.name for f in fields(SamplingParams)}
_REQUEST = ("max_tokens", "stop", "add_bos", "parse_special", "ignore_eos")


def request_params(request: GenerationRequest) -> dict[str, Any]:
    """The parameters of `request` (not its prompt) as a JSON-ready dict."""
    sampling = {name: getattr(request.sampling, name) for name in sorted(_SAMPLING)}
    if sampling["logit_bias"] is not None:
        sampling["logit_bias"] = {str(k): v for k, v in sorted(sampling["logit_bias"].items())}
    out: dict[str, Any] = {name: getattr(request, name) for name in _REQUEST}
    out["stop"] = list(request.stop)
    out["sampling"] = sampling
    return out


def request_from_params(prompt: str | list[int], params: dict[str, Any]) -> GenerationRequest:
    """The request `request_params` described, for `prompt`; UsageError for a bad record."""
    if not isinstance(params, dict):
        raise UsageError("the record's params are not an object")
    unknown = set(params) - set(_REQUEST) - {"sampling"}
    sampling = params.get("sampling", {})
    if not isinstance(sampling, dict):
        raise UsageError("the record's params.sampling is not an object")
    unknown |= {f"sampling.{k}" for k in set(sampling) - _SAMPLING}
    if unknown:
        raise UsageError(
            f"the record has parameters this sovcli does not know: {', '.join(sorted(unknown))}",
            hint="Replay it with the sovcli version that wrote it.",
        )
    values = dict(sampling)
    bias = values.get("logit_bias")
    if bias is not None:
        try:
            values["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (AttributeError, TypeError, ValueError):
            raise UsageError("the record's logit_bias is not {token id: bias}") from None
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"the record's sampling.{name} is not a finite number")
    try:
        sampling_params = SamplingParams(**values)
        request = GenerationRequest(
            prompt=prompt,
            sampling=sampling_params,
            **{k: params[k] for k in _REQUEST if k in params},
        )
    except TypeError as exc:
        raise UsageError(f"the record's params do not describe a request: {exc}") from None
    request.stop = list(request.stop or [])
    return request
