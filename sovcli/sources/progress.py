"""Rich progress bars on stderr (bytes, speed, ETA) and a tqdm look-alike for the hub client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sovcli.console import err_console


class PullProgress:
    """One rich Progress shared by every file of a pull; a no-op when quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._progress: Any = None

    def __enter__(self) -> PullProgress:
        return self

    def _start(self) -> Any:
        """Create and start the rich display on first use (so an idle pull prints nothing)."""
        if self._progress is None and not self.quiet:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console(),
                transient=False,
            )
            self._progress.start()
        return self._progress

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop drawing (before another component shows its own progress)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def add(self, description: str, total: int | None, completed: int = 0) -> Any:
        """Start a bar; returns a task id (None when quiet)."""
        progress = self._start()
        if progress is None:
            return None
        return progress.add_task(description, total=total, completed=completed)

    def advance(self, task: Any, nbytes: int) -> None:
        """Move a bar forward by `nbytes`."""
        if self._progress is not None and task is not None:
            self._progress.advance(task, nbytes)

    def update(self, task: Any, **kwargs: Any) -> None:
        """Change a bar (total, completed, description)."""
        if self._progress is not None and task is not None:
            self._progress.update(task, **kwargs)

    def tqdm_class(self, description: str) -> type:
        """A tqdm look-alike class the hub client can drive; updates land in our rich bar."""
        owner = self

        class _Bar:
            def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kw: Any):
                self.n = initial
                self.total = total
                self._task = owner.add(description, total, completed=initial)

            def update(self, n: int = 1) -> None:
                self.n += n
                owner.advance(self._task, n)

            def close(self) -> None:
                pass

            def refresh(self, *a: Any, **k: Any) -> None:
                pass

            def set_description(self, *a: Any, **k: Any) -> None:
                pass

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return _Bar


@contextlib.contextmanager
def status(message: str, quiet: bool) -> Iterator[None]:
    """A spinner with `message` on stderr while the block runs (nothing when quiet)."""
    if quiet:
        yield
        return
    with err_console().status(message):
        yield
