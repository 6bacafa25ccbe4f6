"""Prometheus metrics, written by hand in the text exposition format (no client library).

Counters and histograms are updated from the event loop and read by `/metrics`; gauges
(queue depth, active sequences) are sampled from each engine's `stats()` at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing value per label set."""

    def __init__(self, name: str, help_text: str, label_names: Labels) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        """Add `amount` (>= 0) to the series `labels`."""
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: Labels) -> float:
        """The current value of one series (0 if never touched)."""
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        """Exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            lines.append(f"{self.name}{_label_text(self.label_names, labels)} {_number(value)}")
        return lines


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    def __init__(
        self, name: str, help_text: str, label_names: Labels, buckets: tuple[float, ...]
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, labels: Labels, value: float) -> None:
        """Record one observation."""
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            series[index] += 1
            series[-1] += value

    def count(self, labels: Labels) -> int:
        """How many observations the series holds."""
        series = self._series.get(labels)
        return int(sum(series[:-1])) if series else 0

    def render(self) -> list[str]:
        """Exposition lines (`_bucket` cumulative, `_sum`, `_count`)."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series[:-1], strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lt = _label_text(self.label_names, labels, f'le="{le}"')
                lines.append(f"{self.name}_bucket{lt} {_number(cumulative)}")
            lt = _label_text(self.label_names, labels)
            lines.append(f"{self.name}_sum{lt} {_number(series[-1])}")
            lines.append(f"{self.name}_count{lt} {_number(cumulative)}")
        return lines


DRAFT_METRICS = (
    ("sovcli_draft_tokens_total", "Tokens drafted by speculative decoding (all models)."),
    (
        "sovcli_draft_accepted_tokens_total",
        "Drafted tokens the model confirmed (all models); accepted / drafted is the rate.",
    ),
)


def render_total(metric: tuple[str, str], value: int) -> list[str]:
    """Exposition lines of a counter without labels, whose value is kept elsewhere."""
    name, help_text = metric
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {_number(value)}"]


def render_gauge(name: str, help_text: str, label_names: Labels, samples: Iterable) -> list[str]:
    """Exposition lines for a gauge sampled now: `samples` yields (label values, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        lines.append(f"{name}{_label_text(label_names, labels)} {_number(value)}")
    return lines


class ServerMetrics:
    """All the server's counters and histograms (one instance per app)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "sovcli_requests_total", "HTTP requests by endpoint and status.", ("endpoint", "status")
        )
        self.prompt_tokens = Counter(
            "sovcli_prompt_tokens_total", "Prompt tokens processed.", ("model",)
        )
        self.generated_tokens = Counter(
            "sovcli_generated_tokens_total", "Tokens generated.", ("model",)
        )
        self.latency = Histogram(
            "sovcli_request_duration_seconds",
            "Time from request to the end of the response.",
            ("endpoint",),
            LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            "sovcli_time_to_first_token_seconds",
            "Time from request to the first generated token (queue wait included).",
            ("model",),
            TTFT_BUCKETS,
        )
        self.in_flight = 0

    def render(
        self, engine_samples: list[tuple[str, int, int, int]], drafts: tuple[int, int] = (0, 0)
    ) -> str:
        """The whole exposition; `engine_samples` holds (model, active, queued, parallel),
        `drafts` the speculative tokens drafted and accepted since the server started
        (`ModelRegistry.draft_totals`)."""
        lines: list[str] = []
        for metric in (self.requests, self.prompt_tokens, self.generated_tokens):
            lines.extend(metric.render())
        lines.extend(render_total(DRAFT_METRICS[0], drafts[0]))
        lines.extend(render_total(DRAFT_METRICS[1], drafts[1]))
        lines.extend(self.latency.render())
        lines.extend(self.ttft.render())
        lines.extend(
            render_gauge(
                "sovcli_active_sequences",
                "Sequences being decoded now.",
                ("model",),
                (((m,), a) for m, a, _q, _p in engine_samples),
            )
        )
        lines.extend(
            render_gauge(
                "sovcli_queue_depth",
                "Requests waiting for a free sequence slot.",
                ("model",),
                (((m,), q) for m, _a, q, _p in engine_samples),
            )
        )
        lines.extend(
            render_gauge(
                "sovcli_parallel_slots",
                "Sequence slots (--parallel).",
                ("model",),
                (((m,), p) for m, _a, _q, p in engine_samples),
            )
        )
        lines.extend(
            render_gauge(
                "sovcli_requests_in_flight",
                "HTTP requests being served.",
                (),
                [((), self.in_flight)],
            )
        )
        return "\n".join(lines) + "\n"
