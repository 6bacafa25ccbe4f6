"""Per-tensor progress bars on stderr for conversion and quantization (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sovcli.console import err_console


@contextlib.contextmanager
def tensor_progress(label: str, *, enabled: bool = True) -> Iterator[Any]:
    """Yield `update(index, total, name)`; draws a bar of tensors done on stderr.

    The bar appears at the first update, so a command that fails its checks draws nothing.
    """
    if not enabled:
        yield lambda *args: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[tensor]}", style="dim"),
        console=err_console(),
        transient=False,
    )
    task = progress.add_task(label, total=None, tensor="")
    started = False

    def update(index: int, total: int, name: str, *_rest: Any) -> None:
        nonlocal started
        if not started:
            progress.start()
            started = True
        progress.update(task, completed=index, total=total, tensor=name)

    try:
        yield update
    finally:
        if started:
            progress.stop()
