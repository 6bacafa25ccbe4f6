"""The RAM prompt cache: a repeated prompt landing on another slot is restored, not decoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sovcli.engine.prompt_cache import PromptCache
from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def test_lru_keeps_the_budget_and_drops_entries_a_longer_one_covers():
    cache = PromptCache(max_bytes=100)
    cache.put([1, 2, 3], b"x" * 40)
    cache.put([1, 2, 3, 4, 5], b"y" * 40)  # covers [1, 2, 3]: replaces it
    assert len(cache) == 1
    assert cache.covers([1, 2, 3, 4])
    cache.put([7, 8], b"z" * 40)
    cache.put([9, 9], b"w" * 40)  # over budget: the least recently used goes
    assert cache.size_bytes <= 100
    entry, shared = cache.best([7, 8, 1])
    assert entry is not None and entry.tokens == (7, 8) and shared == 2
    assert cache.best([1, 2, 3, 4, 5, 6])[0] is None  # evicted first
    assert PromptCache(0).enabled is False


@pytest.fixture(scope="module")
def cached_engine(smollm2_gguf: Path):
    from sovcli.engine.core import Engine

    eng = Engine(
        EngineConfig(
            model_path=str(smollm2_gguf),
            n_parallel=2,
            n_ctx=512,
            n_threads=1,
            prompt_cache_mib=32,
        )
    )
    yield eng
    eng.close()


@pytest.mark.slow
def test_repeated_prompt_is_restored_from_the_cache(cached_engine):
    eng = cached_engine
    prompts = [
        eng.render_chat([{"role": "user", "content": text}])
        for text in (
            "Explain what a CPU cache is, in two sentences.",
            "Write a haiku about rivers and mountains.",
            "List three prime numbers above one hundred.",
        )
    ]
    from greedy_agreement import GREEDY_TOP5, agreeing_prefix, run_of

    def request(prompt: str) -> GenerationRequest:
        return GenerationRequest(prompt, max_tokens=24, sampling=GREEDY_TOP5, ignore_eos=True)

    stream = eng.submit(request(prompts[0]))
    first = run_of(stream)
    # Two other prompts overwrite both slots: the first sequence survives only in the cache.
    for prompt in prompts[1:] * 2:
        eng.generate(GenerationRequest(prompt, max_tokens=24, sampling=GREEDY))
    hits_before = eng.prompt_cache.hits
    stream = eng.submit(request(prompts[0]))
    again = run_of(stream)
    assert eng.prompt_cache.hits == hits_before + 1
    result = stream.result()
    # All but the last token, less what reproducible mode re-decodes so that the prompt's last
    # rows meet the same kernels as in a fresh run (at most one prefill chunk of 8 rows).
    assert result.prompt_tokens - 9 <= result.cached_prompt_tokens <= result.prompt_tokens - 1
    # The restored cells are the same bytes, but the last prompt token is decoded alone, not in
    # the prompt's batch, which changes the kernels on some CPUs: the answers agree up to a
    # near tie (measured on AVX2: identical, 24/24; its closest ties are 0.016 nats at token
    # 17, then 0.07 and 0.09 at tokens 8 and 10).
    assert agreeing_prefix(first, again) >= 8, (first[0], again[0])
