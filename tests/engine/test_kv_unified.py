"""`kv_unified=True` (serve --kv-unified): one KV pool, the same per-sequence context limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams
from sovcli.errors import ContextOverflowError


def test_unified_pool_keeps_the_per_sequence_limit_and_decodes_together(smollm2_gguf: Path):
    from sovcli.engine.core import Engine

    config = EngineConfig(
        model_path=str(smollm2_gguf), n_parallel=2, n_ctx=256, n_threads=1, kv_unified=True
    )
    with Engine(config) as eng:
        assert eng.n_ctx == 256  # not the whole 512-cell pool
        with pytest.raises(ContextOverflowError):
            eng.submit(GenerationRequest(list(range(1000, 1300)), max_tokens=1))
        greedy = SamplingParams(temperature=0.0)
        streams = [
            eng.submit(
                GenerationRequest(
                    eng.render_chat([{"role": "user", "content": q}]),
                    max_tokens=12,
                    sampling=greedy,
                )
            )
            for q in ("Name a colour.", "Name a planet.")
        ]
        results = [s.result() for s in streams]
        assert all(r.completion_tokens > 0 and r.error is None for r in results)
