"""The inference engine: one llama.cpp context, many sequences, continuous batching.

Front ends (run, chat, serve, batch, bench) share it through the types in `types.py`:
build an `EngineConfig`, open an `Engine`, `submit()` `GenerationRequest`s and read the
`GenerationStream`s they return. llama_cpp is imported lazily, so importing this package
is cheap.
"""

from sovcli.engine.types import (
    ChatMessage,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "ChatMessage",
    "EngineConfig",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "ModelInfo",
    "SamplingParams",
    "TokenEvent",
]
