"""Compare two greedy runs of one model in a way that holds on every CPU.

llama.cpp's kernels differ between CPUs (AVX2, AVX-512, NEON with i8mm, Metal) and, on some,
with the shape of the batch: one sequence alone, several in one batch, the last prompt token
decoded after a cache restore. Two greedy runs can then part at a near tie (top-2 logprob gap
of a few hundredths), and everything after it differs. So two runs must agree token for token
until they part, may part only where both rate the two tokens within `TIE` nats of each other,
and tests assert the share of positions they agree on, never the whole text.
"""

from __future__ import annotations

from collections.abc import Iterable

from sovcli.engine.types import SamplingParams, TokenEvent, TokenLogprob

# Kernel differences move a logit by ~0.01-0.05 (an AVX2 vs AVX-512 flip seen at a 0.03 gap); a
# wrong sequence, logit row or restored cache puts the other token nats away, or out of the top 5.
TIE = 0.25
GREEDY_TOP5 = SamplingParams(temperature=0.0, logprobs=5)

Run = tuple[list[int], list[TokenLogprob]]


def run_of(events: Iterable[TokenEvent]) -> Run:
    """The token ids and their logprobs (top-5 alternatives) of a stream's events."""
    ids: list[int] = []
    logprobs: list[TokenLogprob] = []
    for event in events:
        ids.extend(event.token_ids)
        logprobs.extend(event.logprobs)
    assert len(ids) == len(logprobs), "request the run with sampling=GREEDY_TOP5"
    return ids, logprobs


def agreeing_prefix(a: Run, b: Run, tie: float = TIE) -> int:
    """How many leading tokens `a` and `b` share; fails unless they part at a near tie.

    Both runs need the same length (use `ignore_eos=True`)."""
    (ids_a, lp_a), (ids_b, lp_b) = a, b
    assert len(ids_a) == len(ids_b), f"runs of different lengths: {ids_a} vs {ids_b}"
    for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)):
        if x == y:
            continue
        for own, other in ((lp_a[i], lp_b[i]), (lp_b[i], lp_a[i])):
            alternative = dict(own.top).get(other.token)
            assert alternative is not None and own.logprob - alternative <= tie, (
                f"runs part at token {i} without a near tie: {own.token!r} "
                f"(logprob {own.logprob:.3f}) vs {other.token!r} (logprob {alternative}); "
                f"top 5: {own.top}"
            )
        return i
    return len(ids_a)
