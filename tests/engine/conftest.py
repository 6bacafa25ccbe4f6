"""Engine test fixtures: one shared 4-slot engine on the real SmolLM2 model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# greedy_agreement.py, beside this file, is imported by the tests as a plain module.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def engine(smollm2_gguf: Path) -> Iterator:
    """A loaded Engine with 4 parallel sequences and 512 tokens of context each.

    One thread: on a shared CI machine, two OpenMP threads stall each other at every barrier
    when another process takes a core (measured 10-50x slower); the results are identical.
    """
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    eng = Engine(EngineConfig(model_path=str(smollm2_gguf), n_parallel=4, n_ctx=512, n_threads=1))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def chat_prompt(engine) -> str:
    """A rendered one-turn chat prompt."""
    return engine.render_chat([{"role": "user", "content": "Name three colours."}])
