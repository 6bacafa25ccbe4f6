"""Speculative decoding: drafting tokens and deciding how many are worth verifying.

Each step a generating sequence may carry drafted tokens after its sampled one; the engine
verifies them in the same llama_decode as every other sequence's rows (sovcli/engine/core.py,
`Engine._decode`). Row i's logits are sampled with the sequence's own sampler chain, exactly as
plain decoding would sample them; a draft token is kept while it equals what was sampled, and the
first sample that differs is the step's last token. Drafts here are deterministic proposals (an
n-gram continuation or a draft model's argmax): for a point-mass proposal q = 1{x}, the standard
speculative-sampling rule (accept x with probability min(1, p(x)/q(x)) = p(x), else sample from
norm(max(p - q, 0))) gives exactly the same law as "sample from p and keep x if it came out",
and the latter also draws one random number per emitted token, as plain decoding does. So at any
temperature the output distribution is unchanged, and with a seed the output is the same.

Where drafting pays depends on the machine: on a compute-bound CPU a second row costs nearly
as much as the first. `DraftPlanner` keeps a measured cost per rows-per-call and each sequence's
recent acceptance, and drafts only the lengths whose expected tokens per second beat a plain step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sovcli import settings
from sovcli.errors import UsageError


def resolve_mode(mode: str | None, *, reproducible: bool, draft: bool) -> str:
    """The speculative mode in force: `mode` (--spec), else SOVCLI_SPEC, else auto; a
    UsageError for an unknown mode or a combination that cannot run (called by the engine,
    and by the CLI before it pulls a draft model).

    Reproducible engines do not draft. llama.cpp 0.3.36 computes the attention of several rows
    of one sequence with another kernel than that of one row (without flash attention, the
    product with V goes through llamafile's tinyBLAS from 2 rows of a sequence and through
    ggml's dot product for 1: sgemm.cpp, `n < 2`; with it, one row over >= 512 cells is split
    over the threads: ops.cpp, `use_split_kv_path`). Verified drafts then carry logits a few
    hundredths away from those of plain steps, so an answer would depend on what was drafted,
    hence on load and timing. `auto` is therefore off there; `always` or a draft model is a
    UsageError that says how to turn reproducible mode off.
    """
    chosen = ((mode if mode is not None else settings.get("SOVCLI_SPEC")) or "auto").strip()
    chosen = chosen.lower()
    if chosen not in settings.SPEC_MODES:
        raise UsageError(
            f"unknown speculative mode {chosen!r}", hint="Use --spec auto, always or off."
        )
    if draft and chosen == "off":
        given = "--spec off" if mode == "off" else "SOVCLI_SPEC=off"
        raise UsageError(
            f"--draft needs speculative decoding, but {given} turns it off",
            hint="Drop --draft, or use --spec auto.",
        )
    if reproducible and chosen != "off":
        if chosen == "always" or draft:
            asked = "--draft" if draft else "--spec always"
            raise UsageError(
                f"{asked} cannot keep answers byte-reproducible (SOVCLI_REPRODUCIBLE is on): "
                "verified drafts go through other llama.cpp kernels than plain steps",
                hint="Set SOVCLI_REPRODUCIBLE=0 to use it (answers then depend on the batch), "
                "or drop it.",
            )
        return "off"
    return chosen


@dataclass
class DraftQuery:
    """What a drafter is asked for one sequence.

    `tokens` is the sequence's whole context: every token in its KV cells followed by the token
    just sampled (whose logits the next decode computes). The drafter proposes what follows.
    """

    seq_id: int
    tokens: Sequence[int]
    n: int  # most tokens wanted (the drafter may return fewer, or none)


class Drafter(Protocol):
    """A source of drafted tokens (n-gram lookup, or a small model sharing the vocabulary)."""

    def reset(self, seq_id: int) -> None:
        """A new request starts in `seq_id`: forget what was known of the old one."""

    def draft(self, queries: list[DraftQuery]) -> list[list[int]]:
        """One list of proposed tokens per query (in order), each at most `query.n` long."""

    def close(self) -> None:
        """Free what the drafter holds (a draft model's context)."""


class NgramDrafter:
    """Drafts from the sequence itself: the tokens that followed the last earlier occurrence of
    its current ending (the longest n-gram of `MAX_N` down to `MIN_N` tokens that occurred before).

    Extraction, summaries and rewrites copy spans of their input, so such continuations are often
    right; they cost a dictionary lookup. The index is built incrementally per sequence.
    """

    MAX_N = 4
    MIN_N = 2

    def __init__(self) -> None:
        # seq_id -> (tokens indexed so far, {n-gram: index right after its last occurrence})
        self._index: dict[int, tuple[list[int], dict[tuple[int, ...], int]]] = {}

    def reset(self, seq_id: int) -> None:
        """Forget the sequence (a new request took the slot)."""
        self._index.pop(seq_id, None)

    def draft(self, queries: list[DraftQuery]) -> list[list[int]]:
        """The continuation of each query's longest earlier n-gram match, at most `n` tokens."""
        return [self._draft_one(q) for q in queries]

    def _draft_one(self, query: DraftQuery) -> list[int]:
        tokens = query.tokens
        size = len(tokens)
        seen, table = self._index.setdefault(query.seq_id, ([], {}))
        if not _extends(seen, tokens):
            seen.clear()  # not the sequence indexed before: start again
            table.clear()
        # Index the n-grams that end before the last token: the last one is what we look up.
        for end in range(len(seen), size):
            seen.append(tokens[end])
            if end == size - 1:
                break
            for n in range(self.MIN_N, self.MAX_N + 1):
                if end + 1 >= n:
                    table[tuple(seen[end + 1 - n : end + 1])] = end + 1
        # `seen` now holds every token; the n-grams ending at the last one are not indexed yet.
        drafts: list[int] = []
        if query.n > 0:
            for n in range(self.MAX_N, self.MIN_N - 1, -1):
                if size < n:
                    continue
                start = table.get(tuple(seen[size - n : size]))
                if start is not None:
                    drafts = seen[start : min(start + query.n, size)]
                    break
        for n in range(self.MIN_N, self.MAX_N + 1):
            if size >= n:
                table[tuple(seen[size - n : size])] = size
        return drafts

    def close(self) -> None:
        """Nothing to free."""
        self._index.clear()


def _extends(seen: list[int], tokens: Sequence[int]) -> bool:
    """Whether `tokens` plausibly continues `seen` (a few probes, not a full compare: the engine
    resets a sequence whenever a new request takes its slot)."""
    n = len(seen)
    if n > len(tokens):
        return False
    return all(seen[i] == tokens[i] for i in {0, n // 4, n // 2, (3 * n) // 4, n - 1} if 0 <= i < n)


class Acceptance:
    """Recent per-token acceptance: accepted / tested drafts, decayed per verification.

    A drafted token is "tested" when every draft before it was accepted; the probability that
    the next drafted token is accepted is estimated as accepted / tested. A sequence starts
    from its engine's pooled estimate (`prior`), worth `PRIOR_WEIGHT` tokens.
    """

    PRIOR_WEIGHT = 2.0

    __slots__ = ("accepted", "decay", "prior", "tested")

    def __init__(self, prior: Acceptance | None = None, decay: float = 0.8) -> None:
        self.accepted = 0.0
        self.tested = 0.0
        self.decay = decay
        self.prior = prior

    def rate(self) -> float:
        """Estimated probability that the next drafted token is accepted."""
        base = self.prior.rate() if self.prior is not None else 0.5
        return (self.accepted + base * self.PRIOR_WEIGHT) / (self.tested + self.PRIOR_WEIGHT)

    def observe(self, drafted: int, accepted: int) -> None:
        """Record one verification: `accepted` of `drafted` tokens kept."""
        tested = accepted + (1 if accepted < drafted else 0)
        self.accepted = self.accepted * self.decay + accepted
        self.tested = self.tested * self.decay + tested
        if self.prior is not None:
            self.prior.observe(drafted, accepted)


class RowCost:
    """What drafted rows cost, in sequence-steps, measured on this machine.

    From decode calls without prompt rows: `per_seq` is the time of a plain call divided by its
    sequences; a call with d drafted rows over s sequences costs (t / per_seq - s) steps for
    its d rows, kept as a moving average per d. A length never measured is extrapolated from
    the nearest measured shorter one (or `PRIOR_RATIO` steps per row). On a memory-bound
    machine a row costs a few percent of a step; on a compute-bound one nearly a whole step,
    and less again from 8 rows, where llama.cpp switches to tiled kernels.
    """

    # Until measured, a drafted row is assumed to cost a whole step (a compute-bound CPU: the
    # 2-core AVX2 machine of docs/benchmarks.md measured 0.9): only the one-token tries that
    # `Engine._draft` makes now and then measure it, and drafting follows where it is cheaper.
    PRIOR_RATIO = 1.0
    WEIGHT = 0.2

    def __init__(self) -> None:
        self.per_seq = 0.0
        self.steps: dict[int, float] = {}  # drafted rows in a call -> their cost in steps
        self.calls_since_plain = 0

    def observe(self, seconds: float, sequences: int, drafted_rows: int) -> None:
        """Record one decode call of `sequences` sampled rows plus `drafted_rows` drafts."""
        if sequences <= 0 or seconds <= 0:
            return
        if drafted_rows == 0:
            per_seq = seconds / sequences
            w = 1.0 if self.per_seq == 0 else self.WEIGHT
            self.per_seq += w * (per_seq - self.per_seq)
            self.calls_since_plain = 0
            return
        self.calls_since_plain += 1
        if self.per_seq <= 0:
            return
        steps = min(max(seconds / self.per_seq - sequences, 0.0), 2.0 * drafted_rows)
        old = self.steps.get(drafted_rows)
        self.steps[drafted_rows] = steps if old is None else old + self.WEIGHT * (steps - old)

    def cost(self, rows: int) -> float:
        """Estimated cost of `rows` drafted rows, in steps of one sequence."""
        known = self.steps.get(rows)
        if known is not None:
            return known
        shorter = [d for d in self.steps if d < rows]
        if shorter:
            d = max(shorter)
            return self.steps[d] * rows / d
        return self.PRIOR_RATIO * rows

    def need_plain_call(self) -> bool:
        """True every so often while drafting, so the plain step's cost stays measured."""
        return self.per_seq == 0 or self.calls_since_plain >= 64


def best_draft_length(rate: float, cost: RowCost, most: int) -> int:
    """The draft length k <= `most` maximising expected tokens per unit of cost,
    (1 + p + ... + p^k) / (1 + cost(k)); 0 when no length beats a plain step by 5%."""
    best_k, best_value = 0, 1.0
    expected, term = 1.0, 1.0
    for k in range(1, most + 1):
        term *= rate
        expected += term
        value = expected / (1.0 + cost.cost(k))
        if value > best_value * 1.05:  # a gain below 5% is within noise: not worth the rows
            best_k, best_value = k, value
    return best_k
