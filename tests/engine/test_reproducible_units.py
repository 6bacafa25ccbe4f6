"""What `audit replay` rebuilds from a record, and the reproducible-mode switch (no model)."""

from __future__ import annotations

import json

import pytest

from sovcli.engine.recorded import request_from_params, request_params
from sovcli.engine.reproducible import default_reproducible
from sovcli.engine.types import GenerationRequest, SamplingParams
from sovcli.errors import UsageError


def test_a_request_survives_its_json_record():
    sampling = SamplingParams(temperature=0.0, top_k=7, seed=3, logit_bias={42: -100.0, 7: 2.5})
    request = GenerationRequest("Hi", max_tokens=33, sampling=sampling, stop=["\n\n"])
    params = json.loads(json.dumps(request_params(request)))
    again = request_from_params("Hi", params)
    assert again.sampling == request.sampling and again.stop == ["\n\n"]
    assert again.max_tokens == 33 and again.add_bos and not again.ignore_eos


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sampling": {"temperature": 0.0, "mirostat": 2}}, "sampling.mirostat"),
        ({"beam_width": 4}, "beam_width"),
        ({"sampling": {"logit_bias": {"x": 1}}}, "logit_bias"),
        ({"sampling": {"temperature": float("nan")}}, "finite"),
        ({"sampling": []}, "not an object"),
    ],
)
def test_a_record_with_unknown_or_bad_parameters_is_refused(params, message):
    with pytest.raises(UsageError, match=message):
        request_from_params("Hi", params)


def test_reproducible_is_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("SOVCLI_REPRODUCIBLE", raising=False)
    assert default_reproducible() is True
    monkeypatch.setenv("SOVCLI_REPRODUCIBLE", "0")
    assert default_reproducible() is False
    monkeypatch.setenv("SOVCLI_REPRODUCIBLE", "maybe")
    with pytest.raises(UsageError, match="SOVCLI_REPRODUCIBLE"):
        default_reproducible()
