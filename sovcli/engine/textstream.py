"""Turning token bytes into safe text deltas: whole UTF-8 characters, stop strings held back."""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feeds token pieces (bytes) in, hands out text that is safe to show.

    - A multi-byte UTF-8 character split across tokens is held until it is complete.
    - Text that could be the beginning of a stop string is held until it is known not to be.
    - When a stop string appears, everything before it is released and `stopped` becomes True.
    """

    def __init__(self, stop: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stop or []) if s]
        self._held = ""  # decoded but not yet released
        self.text = ""  # everything released so far
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; returns the newly releasable text (may be "")."""
        if self.stopped:
            return ""
        chunk = self._decoder.decode(piece)
        if not chunk:
            return ""
        if not self._stops:
            self.text += chunk
            return chunk
        self._held += chunk
        return self._release(final=False)

    def finish(self) -> str:
        """Flush at the end of generation: incomplete bytes become U+FFFD, held text is released."""
        if self.stopped:
            return ""
        tail = self._decoder.decode(b"", final=True)
        if not self._stops:
            self.text += tail
            return tail
        self._held += tail
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        held = self._held
        first = -1
        for stop in self._stops:
            at = held.find(stop)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            out = held[:first]
            self._held = ""
            self.stopped = True
            self.text += out
            return out
        keep = 0 if final else self._partial_stop_suffix(held)
        out = held[: len(held) - keep]
        self._held = held[len(held) - keep :]
        self.text += out
        return out

    def _partial_stop_suffix(self, held: str) -> int:
        """Length of the longest suffix of `held` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(held)), best, -1):
                if held.endswith(stop[:n]):
                    best = n
                    break
        return best
