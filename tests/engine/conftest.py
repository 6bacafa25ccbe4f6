"""Engine test fixtures: one shared 4-slot engine on the real SmolLM2 model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine(smollm2_gguf: Path) -> Iterator:
    """A loaded Engine with 4 parallel sequences and 512 tokens of context each."""
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    eng = Engine(EngineConfig(model_path=str(smollm2_gguf), n_parallel=4, n_ctx=512))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def chat_prompt(engine) -> str:
    """A rendered one-turn chat prompt."""
    return engine.render_chat([{"role": "user", "content": "Name three colours."}])
