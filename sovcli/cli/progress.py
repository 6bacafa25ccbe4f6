"""Drawing progress for the CLI: the only place that renders `sovcli.progress` reports.

- On a terminal: rich bars on stderr that fit 80 columns (label cut to fit, a short bar).
- In a pipe or a log file: plain lines with counts, one per task every `PLAIN_INTERVAL`
  seconds and one when it ends, so a log shows progress while the work runs.
- `--quiet` or `SOVCLI_NO_PROGRESS=1`: nothing.

The ETA is the remaining amount over the average rate since the task began (after a short
warm-up), so it does not jump with every burst.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sovcli.progress import Progress, ProgressTask
from sovcli.settings import progress_enabled

PLAIN_INTERVAL = 10.0
WARMUP_SECONDS = 1.0
ETA_MIN_SECONDS = 10.0
ETA_MIN_FRACTION = 0.05
LABEL_WIDTH = 30


def human_bytes(n: float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as download tools show)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def clock(seconds: float | None) -> str:
    """Seconds as H:MM:SS ('-:--:--' when unknown)."""
    if seconds is None or seconds < 0 or seconds != seconds:
        return "-:--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def fit(label: str, width: int = LABEL_WIDTH) -> str:
    """Cut a label to `width` characters: keep its first word (the verb, "verify", "write")
    and the end of the rest (file names differ at the end)."""
    if len(label) <= width:
        return label
    verb, _, rest = label.partition(" ")
    if rest and len(verb) < width // 2:
        keep = width - len(verb) - 2
        return f"{verb} …{rest[-keep:]}"
    return "…" + label[-(width - 1) :]


class _Counter:
    """Position, total and a steady rate for one task."""

    def __init__(self, label: str, total: float | None, unit: str, completed: float) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.completed = self.start_completed = completed
        self.started = time.monotonic()

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self.completed - self.start_completed
        if elapsed < WARMUP_SECONDS or done <= 0:
            return None
        return done / elapsed

    def eta(self) -> float | None:
        """Remaining over the average rate since the start; None until that average means
        something (10 s and 5% done), so the first guesses do not swing."""
        rate = self.rate()
        if rate is None or not self.total:
            return None
        elapsed = time.monotonic() - self.started
        done = (self.completed - self.start_completed) / self.total
        if elapsed < ETA_MIN_SECONDS or done < ETA_MIN_FRACTION:
            return None
        return max(0.0, self.total - self.completed) / rate

    def amount(self) -> str:
        if self.unit == "B":
            done = human_bytes(self.completed)
            return f"{done}/{human_bytes(self.total)}" if self.total else done
        done = f"{self.completed:,.0f}"
        return f"{done}/{self.total:,.0f} {self.unit}" if self.total else f"{done} {self.unit}"

    def speed(self) -> str:
        rate = self.rate()
        if rate is None:
            return ""
        return f"{human_bytes(rate)}/s" if self.unit == "B" else f"{rate:,.1f} {self.unit}/s"


class _Renderer(Progress):
    """Base of the renderers: a Progress that is also a context manager (leaving stops drawing)."""

    def close(self) -> None:
        """Stop drawing."""

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CountingTask(ProgressTask):
    """A task that keeps its count in a `_Counter` and redraws through `refresh()`."""

    counter: _Counter

    def advance(self, amount: float) -> None:
        self.counter.completed += amount
        self.refresh()

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        label: str | None = None,
    ) -> None:
        c = self.counter
        c.completed = c.completed if completed is None else completed
        c.total = c.total if total is None else total
        c.label = c.label if label is None else label
        self.refresh()

    def refresh(self) -> None:
        """Show the new state (or not yet)."""


class PlainTask(_CountingTask):
    """A task that prints a line now and then (for pipes and logs)."""

    def __init__(self, owner: PlainProgress, counter: _Counter) -> None:
        self.owner, self.counter = owner, counter
        self.last_line = 0.0
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.write(self.line(final=True))

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.last_line >= self.owner.interval and now - self.counter.started >= 1:
            self.last_line = now
            self.owner.write(self.line())

    def line(self, final: bool = False) -> str:
        c = self.counter
        parts = [f"{c.label}: {c.amount()}"]
        if c.total:
            parts.append(f"({100 * c.completed / c.total:.0f}%)")
        if speed := c.speed():
            parts.append(speed)
        if final:
            parts.append(f"in {clock(time.monotonic() - c.started)}")
        elif c.total:
            parts.append(f"ETA {clock(c.eta())}")
        return " ".join(parts)


class PlainProgress(_Renderer):
    """Progress as plain lines on stderr."""

    def __init__(self, stream: Any = None, interval: float = PLAIN_INTERVAL) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval

    def task(
        self, label: str, total: float | None = None, *, unit: str = "B", completed: float = 0
    ) -> ProgressTask:
        return PlainTask(self, _Counter(label, total, unit, completed))

    def note(self, message: str) -> None:
        self.write(message)

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class RichTask(_CountingTask):
    """A rich bar."""

    def __init__(self, owner: RichProgress, counter: _Counter) -> None:
        self.owner, self.counter = owner, counter
        self.id = owner.bars.add_task(fit(counter.label), total=counter.total, counter=counter)
        self.refresh()

    def refresh(self) -> None:
        c = self.counter
        self.owner.bars.update(
            self.id, completed=c.completed, total=c.total, description=fit(c.label)
        )

    def close(self) -> None:
        c = self.counter
        if c.total is None:
            self.owner.bars.update(self.id, total=c.completed)


class RichProgress(_Renderer):
    """Bars on a terminal, 80 columns wide at most; started at the first task."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
        from rich.text import Text

        from sovcli.cli.output import err_console

        class _Amount(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(task.fields["counter"].amount())

        class _Speed(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(task.fields["counter"].speed())

        class _Eta(ProgressColumn):
            def render(self, task: Any) -> Text:
                counter = task.fields["counter"]
                if task.finished:
                    return Text(clock(time.monotonic() - counter.started))
                return Text(clock(counter.eta()))

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=12),
            _Amount(),
            _Speed(),
            _Eta(),
            console=err_console(),
            transient=False,
        )
        self.started = False

    def task(
        self, label: str, total: float | None = None, *, unit: str = "B", completed: float = 0
    ) -> ProgressTask:
        if not self.started:
            self.bars.start()
            self.started = True
        return RichTask(self, _Counter(label, total, unit, completed))

    def note(self, message: str) -> None:
        self.bars.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop drawing (call before printing anything else)."""
        if self.started:
            self.bars.stop()
            self.started = False


def make_progress(quiet: bool = False) -> _Renderer:
    """The renderer for this command: nothing, rich bars (terminal) or plain lines (pipe).

    Use as a context manager so bars stop before the command prints its result.
    """
    if quiet or not progress_enabled():
        return _Quiet()
    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress()


def ensure_model(ref: str, quiet: bool = False, action: str = "run") -> Any:
    """The installed model for `ref`, pulled first (with progress drawn) when it is missing,
    once the site policy allows `action` on it (PolicyDenied otherwise)."""
    from sovcli.resolve import ensure_model as resolve_model

    with make_progress(quiet) as progress:
        return resolve_model(ref, action=action, progress=progress)


class _Quiet(_Renderer):
    """Draws nothing (`--quiet`, SOVCLI_NO_PROGRESS=1): the base class as it is."""


__all__ = ["Progress", "clock", "fit", "human_bytes", "make_progress"]
