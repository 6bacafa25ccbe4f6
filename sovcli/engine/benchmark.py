"""Measuring the engine the way llama-bench does: pp (prompt t/s), tg (generation t/s),
time to first token, peak memory, and aggregate generation with parallel sequences."""

from __future__ import annotations

import random
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams
from sovcli.progress import NULL_PROGRESS, Progress

GREEDY = SamplingParams(temperature=0.0)


@dataclass
class BenchReport:
    """Everything `sovcli bench` measures (medians over repetitions)."""

    model: str
    threads: int
    n_prompt: int
    n_gen: int
    pp_tokens_per_s: float = 0.0
    tg_tokens_per_s: float = 0.0
    ttft_ms: float = 0.0
    peak_rss_bytes: int = 0
    parallel: dict[int, float] = field(default_factory=dict)  # sequences -> aggregate gen t/s
    speculative: str = "off"  # the engines' speculative mode (auto | off)
    draft_model: str | None = None  # the draft model's file (--draft), if any
    drafted_tokens: int = 0  # speculative tokens proposed over every test
    accepted_tokens: int = 0  # of those, confirmed by the model

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        out = asdict(self)
        out["parallel"] = {str(k): v for k, v in self.parallel.items()}
        return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def peak_rss_bytes() -> int:
    """Peak resident memory of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _random_prompt(rng: random.Random, n_vocab: int, n: int) -> list[int]:
    # Ordinary tokens only (ids 0..~100 are special/bytes in most vocabularies).
    low = min(1000, n_vocab // 2)
    return [rng.randrange(low, n_vocab) for _ in range(n)]


def _generation_rate(results: list[Any]) -> float:
    """Aggregate generation t/s of sequences decoded together, prompt processing excluded.

    Like llama-batched-bench's S_TG: each sequence's first token comes from its prompt's
    logits, the rest from generation steps; the window runs from the earliest end of a
    prompt to the last token (each result's `generation_s` starts at its prompt's end).
    """
    window = max(r.generation_s for r in results)
    tokens = sum(max(r.completion_tokens - 1, 0) for r in results)
    return tokens / window if window > 0 else 0.0


def _count_drafts(report: BenchReport, engine: Any) -> None:
    """Add what the engine drafted and accepted to the report's totals."""
    stats = engine.stats()
    report.drafted_tokens += stats.drafted_tokens_total
    report.accepted_tokens += stats.accepted_tokens_total


def run_bench(
    model_path: str,
    *,
    threads: int | None = None,
    n_prompt: int = 128,
    n_gen: int = 128,
    parallel: tuple[int, ...] = (1, 2, 4, 8),
    parallel_gen: int = 64,
    repetitions: int = 3,
    progress: Progress | None = None,
    speculative: str | None = None,
    draft_model_path: str | None = None,
    draft_max: int | None = None,
) -> BenchReport:
    """Load the model, measure, and return a BenchReport (`progress` hears each phase).

    `speculative`, `draft_model_path` and `draft_max` are EngineConfig's (None: its
    defaults); the report says which mode ran and how many tokens were drafted and accepted.
    """
    from sovcli.engine.core import Engine

    say = (progress or NULL_PROGRESS).note
    rng = random.Random(1234)
    spec: dict[str, Any] = {"speculative": speculative, "draft_model_path": draft_model_path}
    if draft_max is not None:
        spec["draft_max"] = draft_max
    config = EngineConfig(
        model_path=model_path, n_ctx=max(512, n_prompt + n_gen + 16), n_threads=threads, **spec
    )
    with Engine(config) as engine:
        report = BenchReport(
            model=engine.info.name, threads=engine.n_threads, n_prompt=n_prompt, n_gen=n_gen,
            speculative=engine.speculative,
            draft_model=Path(draft_model_path).name if draft_model_path else None,
        )  # fmt: skip
        n_vocab = engine.info.n_vocab
        say("bench: warming up")
        engine.generate(
            GenerationRequest(_random_prompt(rng, n_vocab, 16), max_tokens=4, sampling=GREEDY)
        )
        pp, tg, ttft = [], [], []
        for rep in range(repetitions):
            say(f"bench: pp{n_prompt} / tg{n_gen} run {rep + 1}/{repetitions}")
            # pp: a fresh random prompt (no cached prefix), one token sampled.
            result = engine.generate(
                GenerationRequest(
                    _random_prompt(rng, n_vocab, n_prompt), max_tokens=1, sampling=GREEDY
                )
            )
            pp.append(result.prompt_tokens_per_s)
            ttft.append(result.time_to_first_token_s * 1000)
            # tg: n_gen tokens after a 1-token prompt, past EOS like llama-bench.
            result = engine.generate(
                GenerationRequest(
                    _random_prompt(rng, n_vocab, 1),
                    max_tokens=n_gen + 1,
                    sampling=GREEDY,
                    ignore_eos=True,
                )
            )
            # The first token comes from the prompt's logits; n_gen decodes follow.
            tg.append((result.completion_tokens - 1) / result.generation_s)
        report.pp_tokens_per_s = _median(pp)
        report.tg_tokens_per_s = _median(tg)
        report.ttft_ms = _median(ttft)
        _count_drafts(report, engine)

    if parallel:
        n_seq_max = max(parallel)
        config = EngineConfig(
            model_path=model_path,
            n_ctx=max(256, parallel_gen + 64),
            n_parallel=n_seq_max,
            n_threads=threads,
            **spec,
        )
        with Engine(config) as engine:
            engine.generate(GenerationRequest(_random_prompt(rng, n_vocab, 8), max_tokens=4))
            for n_seq in parallel:
                say(f"bench: {n_seq} parallel sequence(s)")
                rates = []
                for _ in range(max(1, repetitions - 1)):
                    # Submitted together so that every prompt is decoded in the same step.
                    streams = engine.submit_many(
                        [
                            GenerationRequest(
                                _random_prompt(rng, n_vocab, 8),
                                max_tokens=parallel_gen,
                                sampling=GREEDY,
                                ignore_eos=True,
                            )
                            for _ in range(n_seq)
                        ]
                    )
                    results = [s.result() for s in streams]
                    rates.append(_generation_rate(results))
                report.parallel[n_seq] = _median(rates)
            _count_drafts(report, engine)
    report.peak_rss_bytes = peak_rss_bytes()
    return report
