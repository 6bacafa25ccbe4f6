"""Progress reporting from library code, without drawing anything.

Library functions (pull, verify, convert, quantize, batch) take an optional
`progress: Progress` and report through it; they never print. The CLI passes a renderer
(`sovcli.cli.progress`: rich bars on a terminal, plain periodic lines in a pipe or log);
everything else gets `NULL_PROGRESS`, which does nothing.

    task = progress.task("download model.gguf", total=size, unit="B")
    task.advance(len(chunk))
    task.close()
    progress.note("connection interrupted; resuming with a Range request")
"""

from __future__ import annotations


class ProgressTask:
    """One bar: a named count moving towards a total (None when the total is unknown).

    This base class reports nothing; renderers override its methods.
    """

    def advance(self, amount: float) -> None:
        """Move forward by `amount` units."""

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        label: str | None = None,
    ) -> None:
        """Set the position, the total or the label."""

    def close(self) -> None:
        """The task is finished (a renderer prints its last state)."""


class Progress:
    """Where library code reports what it is doing; this base class reports nothing."""

    def task(
        self, label: str, total: float | None = None, *, unit: str = "B", completed: float = 0
    ) -> ProgressTask:
        """Start a task; `unit` is "B" for bytes, else a noun such as "tensors" or "docs"."""
        return ProgressTask()

    def note(self, message: str) -> None:
        """A one-line status message (a retry, a fallback, a phase that has begun)."""


NULL_PROGRESS = Progress()
"""Reports nothing: the default for library calls and `--quiet`."""
