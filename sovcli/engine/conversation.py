"""Fitting a conversation into the context window by dropping its oldest turns."""

from __future__ import annotations

from typing import Any, Protocol

from sovcli.engine.types import GenerationRequest
from sovcli.errors import ContextOverflowError


class _Renders(Protocol):
    info: Any

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str: ...
    def prompt_tokens(self, request: GenerationRequest) -> list[int]: ...


def fit_messages(
    engine: _Renders, messages: list[dict[str, Any]], reserve: int
) -> tuple[list[dict[str, Any]], str, int]:
    """Drop the oldest non-system messages until the prompt plus `reserve` tokens fits.

    Returns (kept messages, rendered prompt, number of messages dropped). The system message
    and the last message are always kept; if those alone do not fit, ContextOverflowError.
    """
    n_ctx = engine.info.n_ctx
    reserve = max(1, min(reserve, n_ctx // 2))
    kept = list(messages)
    dropped = 0
    while True:
        prompt = engine.render_chat(kept)
        n_tokens = len(engine.prompt_tokens(GenerationRequest(prompt)))
        if n_tokens + reserve <= n_ctx:
            return kept, prompt, dropped
        removable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        if not removable:
            raise ContextOverflowError(
                f"the message needs {n_tokens} tokens but the context holds {n_ctx}",
                hint="Send a shorter message, clear the conversation, or raise --ctx.",
            )
        first = removable[0]
        del kept[first]
        dropped += 1
        # Keep user/assistant pairs together: drop the assistant reply of a dropped user turn.
        if first < len(kept) - 1 and kept[first].get("role") == "assistant":
            del kept[first]
            dropped += 1
