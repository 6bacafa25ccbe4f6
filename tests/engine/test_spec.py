"""Speculative decoding on the real model: output unchanged, drafts really verified.

The requests are the benchmark's own (sovcli/engine/workloads.py, used by scripts/bench_spec.py).
`speculative="always"` drafts whenever the n-gram drafter has tokens, so the tests exercise
verification on every step the drafter can (the cost model of `auto` may decide a machine does
not pay for drafts, which would leave nothing to check). Engines here are not reproducible
(SOVCLI_REPRODUCIBLE=0): reproducible engines never draft.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from sovcli.engine.core import Engine
from sovcli.engine.grammar import json_schema_to_gbnf
from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams
from sovcli.engine.workloads import WorkloadRequest, chat_requests, document_requests

pytestmark = pytest.mark.slow

NEAR_TIE = 1e-3  # the bound on the top-2 logit gap where greedy outputs may part


def _engine(gguf: Path, **config) -> Engine:
    """An engine that drafts whenever it can (reproducible engines never draft: see
    `core._spec_mode`)."""
    config.setdefault("speculative", "always")
    return Engine(EngineConfig(model_path=str(gguf), n_threads=1, reproducible=False, **config))


def _shortest(requests: list[WorkloadRequest], n: int) -> list[WorkloadRequest]:
    """The n requests with the shortest prompts (prompt processing is most of a test's time)."""
    return sorted(requests, key=lambda r: len(r.messages[-1]["content"]))[:n]


def _request(
    engine: Engine, work: WorkloadRequest, *, spec: bool, max_tokens: int, logprobs: int | None
) -> GenerationRequest:
    grammar = json_schema_to_gbnf(work.schema) if work.schema else None
    sampling = SamplingParams(temperature=0.0, grammar=grammar, logprobs=logprobs)
    return GenerationRequest(
        prompt=engine.render_chat(work.messages),
        max_tokens=min(work.max_tokens, max_tokens),
        sampling=sampling,
        speculative=None if spec else False,
    )


def _run_all(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[list[int], list]]:
    """Submit all at once (they decode together); each one's token ids, logprobs and result."""
    streams = engine.submit_many(requests)
    runs = []
    for stream in streams:
        ids: list[int] = []
        logprobs: list = []
        for event in stream:
            ids.extend(event.token_ids)
            logprobs.extend(event.logprobs)
        runs.append((ids, logprobs, stream.result()))
    return runs


def _greedy_runs(gguf: Path, works: list[WorkloadRequest], spec: bool) -> list:
    """Each request alone, in order, on a fresh engine: both runs see the same cache history,
    so speculation is the only difference."""
    with _engine(gguf, n_parallel=1, n_ctx=1024, speculative="always" if spec else "off") as eng:
        return [
            _run_all(eng, [_request(eng, w, spec=spec, max_tokens=32, logprobs=2)])[0]
            for w in works
        ]


def test_greedy_output_is_the_plain_output_on_the_benchmark_requests(smollm2_gguf):
    """>= 95% of the benchmark's requests give the plain answer with speculation; any that
    differs must part where the plain run's top two logits are within 1e-3 (a numerical tie).
    Extraction requests run under their schema's grammar, which must still hold."""
    works = _shortest(document_requests(10), 8) + _shortest(chat_requests(3), 2)
    plain = _greedy_runs(smollm2_gguf, works, spec=False)
    spec = _greedy_runs(smollm2_gguf, works, spec=True)
    same = 0
    for work, (p_ids, p_logprobs, p_res), (s_ids, _, s_res) in zip(works, plain, spec, strict=True):
        assert p_res.error is None and s_res.error is None
        assert p_res.drafted_tokens == 0
        if work.schema and s_res.finish_reason == "stop":
            assert isinstance(json.loads(s_res.text), dict)  # the grammar held under drafts
        if s_ids == p_ids:
            same += 1
            continue
        part = next(i for i, (a, b) in enumerate(zip(p_ids, s_ids, strict=False)) if a != b)
        top = p_logprobs[part].top
        gap = top[0][1] - top[1][1]
        assert gap <= NEAR_TIE, f"{work.kind}: parts at token {part}, top-2 gap {gap:.4f}"
    assert same / len(works) >= 0.95, f"{same} of {len(works)} identical"
    drafted = sum(r.drafted_tokens for _, _, r in spec)
    accepted = sum(r.accepted_tokens for _, _, r in spec)
    assert drafted > 30 and accepted > 10, (drafted, accepted)


def test_reproducible_engines_do_not_draft(smollm2_gguf):
    """Several rows of one sequence take other attention kernels than one row: a reproducible
    engine keeps `auto` off and refuses `always` with a hint."""
    from sovcli.errors import UsageError

    base = dict(model_path=str(smollm2_gguf), n_threads=1, n_ctx=256, reproducible=True)
    with Engine(EngineConfig(**base, speculative="auto")) as engine:
        assert engine.speculative == "off"
        result = engine.generate(
            GenerationRequest(
                prompt=COPY_PROMPT, max_tokens=8, sampling=SamplingParams(temperature=0.0)
            )
        )
        assert result.drafted_tokens == 0
    with pytest.raises(UsageError, match="byte-reproducible") as info:
        Engine(EngineConfig(**base, speculative="always"))
    assert "SOVCLI_REPRODUCIBLE=0" in (info.value.hint or "")


COPY_PROMPT = (
    "Repeat the list exactly.\nList: red apple, green pear, blue plum, red apple, green pear, "
    "blue plum, red apple, green pear, blue plum, red"
)


def _chi_square_p(table: list[list[int]]) -> float:
    """p-value of Pearson's chi-square test of homogeneity of the rows of `table`
    (Wilson-Hilferty approximation of the chi-square tail)."""
    rows = [sum(r) for r in table]
    cols = [sum(c) for c in zip(*table, strict=True)]
    total = sum(rows)
    stat = sum(
        (table[i][j] - rows[i] * cols[j] / total) ** 2 / (rows[i] * cols[j] / total)
        for i in range(len(rows))
        for j in range(len(cols))
    )
    dof = (len(rows) - 1) * (len(cols) - 1)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_sampling_keeps_its_distribution_and_a_seed_keeps_its_text(smollm2_gguf):
    """At temperature > 0 a draft is kept only where the sample came out equal to it, which is
    the speculative-sampling rule for a deterministic proposal: the law of each token is the
    target's, and one random number is drawn per token, as without drafts. So the first two
    tokens (the second verified against drafts) have the same distribution over many seeds
    (chi-square), and the same seed gives the same text."""
    n = 120
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    with _engine(smollm2_gguf, n_parallel=4, n_ctx=256) as engine:

        def texts(seeds: range, spec: bool) -> list:
            requests = [
                GenerationRequest(
                    prompt=COPY_PROMPT,
                    max_tokens=3,
                    sampling=SamplingParams(seed=seed, **sampling),
                    speculative=None if spec else False,
                )
                for seed in seeds
            ]
            return [(ids, result) for ids, _, result in _run_all(engine, requests)]

        plain = texts(range(n), spec=False)
        spec = texts(range(n, 2 * n), spec=True)
        same_seeds = texts(range(n), spec=True)
    assert sum(r.drafted_tokens for _, r in spec) > n // 2  # drafts were really verified
    assert [ids for ids, _ in same_seeds] == [ids for ids, _ in plain]
    plain_counts = Counter(tuple(ids[:2]) for ids, _ in plain)
    spec_counts = Counter(tuple(ids[:2]) for ids, _ in spec)
    both = plain_counts + spec_counts
    common = [k for k, v in both.most_common() if v >= 10]
    assert len(common) >= 2, "too peaked a distribution to test"
    table = [
        [counts[k] for k in common] + [n - sum(counts[k] for k in common)]
        for counts in (plain_counts, spec_counts)
    ]
    if sum(table[0][-1:]) + sum(table[1][-1:]) < 10:
        table = [row[:-1] for row in table]
    assert _chi_square_p(table) > 0.001, table
