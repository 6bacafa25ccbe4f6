"""Each decode step lists its sequences in ascending id order, whichever slots the jobs got.

With one KV stream per sequence, llama.cpp splits a batch into micro-batches of consecutive
sequence ids, scanning in batch order. A batch in job order ([2, 1, 0] below) was computed as
three graph evaluations instead of one: the server's 8-client rate fell by ~15% once prefix
matching had shuffled the slots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sovcli.engine.prompt_cache import common_prefix
from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow  # the real model


class _RecordingLlama:
    """Delegates to llama_cpp and records the sequence id of every token passed to llama_decode."""

    def __init__(self, ll: Any) -> None:
        self._ll = ll
        self.decoded: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ll, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        self.decoded.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return self._ll.llama_decode(ctx, batch)


def test_shuffled_slots_are_decoded_in_sequence_order(smollm2_gguf: Path):
    from sovcli.engine.core import Engine

    config = EngineConfig(model_path=str(smollm2_gguf), n_parallel=3, n_ctx=256, n_threads=1)
    greedy = SamplingParams(temperature=0.0)
    topics = ("rivers", "mountains", "forests")

    def ask(eng: Engine, topic: str, tail: str) -> GenerationRequest:
        prompt = eng.render_chat([{"role": "user", "content": f"Tell me about {topic}. {tail}"}])
        return GenerationRequest(prompt, max_tokens=6, sampling=greedy, ignore_eos=True)

    with Engine(config) as eng:
        for stream in eng.submit_many([ask(eng, t, "Be brief.") for t in topics]):
            stream.result()
        shared_by_topics = common_prefix(
            eng.prompt_tokens(ask(eng, "rivers", "")), eng.prompt_tokens(ask(eng, "forests", ""))
        )

        recorder = _RecordingLlama(eng._ll)
        eng._ll = recorder
        # The same prompts in reverse order: prefix matching gives each its old slot, so the
        # jobs hold slots 2, 1, 0 in that order.
        second = eng.submit_many([ask(eng, t, "Be very brief.") for t in reversed(topics)])
        results = [s.result() for s in second]
        eng._ll = recorder._ll

    assert all(r.error is None and r.completion_tokens == 6 for r in results)
    # Each job went back to the slot that holds its topic, not just the shared chat template.
    assert all(r.cached_prompt_tokens > shared_by_topics for r in results)
    steps = [ids for ids in recorder.decoded if len(set(ids)) > 1]
    assert steps, "the three jobs never shared a decode step"
    for ids in steps:
        assert ids == sorted(ids), f"sequence ids out of order in one step: {ids}"
