"""`PromptCache`: KV states of earlier sequences, kept in RAM to skip re-processing prompts.

A slot keeps the KV cells of its last sequence, so a follow-up turn that lands on the same
slot reuses its prefix. With several slots and many clients, a repeated prompt (the same
system prompt and document, a retried request, an agent's loop) usually lands on another
slot. Before a slot's cells are overwritten, the engine copies that sequence's state here
(`llama_state_seq_get_data`, about 23 KB per token for a 135M model); a new request whose
tokens share a longer prefix with an entry than with any slot gets the state copied back
(`llama_state_seq_set_data`) instead of decoding the prompt again. llama-server does the
same with `--cache-ram`.

Entries are evicted least recently used first, bounded by total bytes. Pure bookkeeping:
the engine's decode thread is the only caller, so there is no locking.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class CachedState:
    """One saved sequence: the tokens its KV cells hold and llama.cpp's serialized state."""

    tokens: tuple[int, ...]
    data: bytes


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """An LRU of `CachedState`s bounded by `max_bytes` (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[tuple[int, ...], CachedState] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.tokens_saved = 0

    @property
    def enabled(self) -> bool:
        """True when the cache may hold anything."""
        return self.max_bytes > 0

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def covers(self, tokens: list[int]) -> bool:
        """True if an entry already holds `tokens` (or a longer sequence starting with them)."""
        for key in self._entries:
            if len(key) >= len(tokens) and common_prefix(key, tokens) == len(tokens):
                return True
        return False

    def best(self, tokens: list[int]) -> tuple[CachedState | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that prefix's length."""
        best: CachedState | None = None
        best_len = 0
        for entry in self._entries.values():
            shared = common_prefix(entry.tokens, tokens)
            if shared > best_len:
                best, best_len = entry, shared
        return best, best_len

    def use(self, entry: CachedState, reused_tokens: int) -> None:
        """Record a hit on `entry` (it becomes the most recently used)."""
        self._entries.move_to_end(entry.tokens)
        self.hits += 1
        self.tokens_saved += reused_tokens

    def put(self, tokens: list[int], data: bytes) -> None:
        """Store a state, replacing entries it makes redundant, then evict down to the budget."""
        if not self.enabled or not tokens or len(data) > self.max_bytes:
            return
        key = tuple(tokens)
        for old_key in [k for k in self._entries if common_prefix(k, key) == len(k)]:
            self._bytes -= len(self._entries.pop(old_key).data)  # a prefix of the new one
        self._entries[key] = CachedState(key, data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.data)
