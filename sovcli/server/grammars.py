"""Grammars built from request JSON schemas, built off the event loop and cached in bytes.

Clients send the same `response_format` or tool schemas again and again, so grammars are
kept, least recently used first out, within `max_bytes` (counted as the grammar text plus
a fixed overhead per entry; keys are SHA-256 digests, so a big schema costs 32 bytes). A
grammar larger than the whole budget is used once and not kept. Building one (JSON-dumping
the schema, checking it, converting it) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from sovcli.errors import UsageError
from sovcli.server.errors import bad_request

ENTRY_OVERHEAD = 256  # bytes per entry beyond the grammar text (key, dict slot, str header)


class GrammarCache:
    """An LRU of grammars by schema, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def grammar(self, schema: dict[str, Any], param: str) -> str:
        """The grammar for `schema`, or a 400 naming `param` when there is none."""
        return await asyncio.to_thread(self.build, schema, param)

    def build(self, schema: dict[str, Any], param: str) -> str:
        """`grammar`, blocking (what the worker thread runs)."""
        from sovcli.engine.grammar import json_schema_to_gbnf

        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode("utf-8")).digest()
        with self._lock:
            grammar = self._entries.get(key)
            if grammar is not None:
                self._entries.move_to_end(key)
                return grammar
        try:
            grammar = json_schema_to_gbnf(schema)
        except UsageError as exc:
            raise bad_request(exc.message, param=param) from exc
        self._put(key, grammar)
        return grammar

    def _put(self, key: bytes, grammar: str) -> None:
        cost = len(grammar) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self._entries and self.size + cost > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.size -= len(old) + ENTRY_OVERHEAD
            self._entries[key] = grammar
            self.size += cost
