"""Split a document into token-sized chunks with overlap, at natural boundaries when possible.

Token counts come from a `count_tokens(text) -> int` callable: the engine's tokenizer for a
local model, or `estimate_tokens` (a chars-per-token estimate) for remote endpoints. Text is
split at paragraphs, then lines, then sentences, then words, then characters, and the pieces
are packed greedily; each chunk after the first starts with the tail of the previous one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

CountTokens = Callable[[str], int]

# Conservative: English averages ~4 chars per token, code and other scripts fewer.
DEFAULT_CHARS_PER_TOKEN = 3.0

_SPLITTERS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?<=\n\n)"),  # paragraphs
    re.compile(r"(?<=\n)"),  # lines
    re.compile(r"(?<=[.!?;:])\s+"),  # sentences
    re.compile(r"(?<=\s)"),  # words
)


def estimate_tokens(text: str, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
    """A token count estimate for a tokenizer we cannot run (remote endpoints)."""
    return math.ceil(len(text) / chars_per_token)


def chunk_text(
    text: str, max_tokens: int, count_tokens: CountTokens, overlap_tokens: int = 0
) -> list[str]:
    """Chunks of `text` of at most `max_tokens` tokens each, consecutive ones overlapping.

    A text that fits is returned whole as one chunk. `overlap_tokens` is capped at half of
    `max_tokens` so that every chunk makes progress.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if count_tokens(text) <= max_tokens:
        return [text]
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    pieces = _split_to_fit(text, max_tokens, count_tokens, 0)
    sizes = [count_tokens(piece) for piece in pieces]

    chunks: list[str] = []
    current: list[int] = []  # indices into pieces
    current_tokens = 0
    for index, size in enumerate(sizes):
        if current and current_tokens + size > max_tokens:
            chunks.append("".join(pieces[i] for i in current))
            # Start the next chunk with the tail of this one (the overlap).
            tail: list[int] = []
            tail_tokens = 0
            for j in reversed(current):
                grown = tail_tokens + sizes[j]
                if grown > overlap_tokens or grown + size > max_tokens:
                    break
                tail.insert(0, j)
                tail_tokens += sizes[j]
            current, current_tokens = tail, tail_tokens
        current.append(index)
        current_tokens += size
    if current:
        chunks.append("".join(pieces[i] for i in current))
    return [chunk for chunk in chunks if chunk.strip()]


def _split_to_fit(text: str, max_tokens: int, count_tokens: CountTokens, level: int) -> list[str]:
    """Pieces of `text` (concatenating back to it), each of at most `max_tokens` tokens."""
    if count_tokens(text) <= max_tokens:
        return [text]
    if level >= len(_SPLITTERS):
        return _split_chars(text, max_tokens, count_tokens)
    parts = [part for part in _keep_separators(_SPLITTERS[level], text) if part]
    if len(parts) <= 1:
        return _split_to_fit(text, max_tokens, count_tokens, level + 1)
    out: list[str] = []
    for part in parts:
        out.extend(_split_to_fit(part, max_tokens, count_tokens, level + 1))
    return out


def _keep_separators(pattern: re.Pattern[str], text: str) -> list[str]:
    """Split at `pattern` keeping every character (separators stay with the left piece)."""
    pieces: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        end = match.end()
        if end > start:
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return pieces


def _split_chars(text: str, max_tokens: int, count_tokens: CountTokens) -> list[str]:
    """Last resort for a run with no whitespace: cut by characters, halving until it fits."""
    out: list[str] = []
    rest = text
    while rest:
        size = len(rest)
        while size > 1 and count_tokens(rest[:size]) > max_tokens:
            size = max(1, size // 2)
        out.append(rest[:size])
        rest = rest[size:]
    return out
