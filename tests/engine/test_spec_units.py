"""Speculative decoding's parts without a model: n-gram drafts, acceptance, row cost, lengths."""

from __future__ import annotations

import pytest

from sovcli.engine.speculative import (
    Acceptance,
    DraftQuery,
    NgramDrafter,
    RowCost,
    best_draft_length,
)


def test_ngram_drafts_continue_the_last_earlier_occurrence_of_the_ending():
    drafter = NgramDrafter()
    tokens = [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert drafter.draft([DraftQuery(0, tokens, 4)]) == [[4, 5, 6, 1]]
    # The sequence grows: the index is extended, not rebuilt, and the newest match wins.
    tokens += [4, 5, 9, 1, 2, 3]
    assert drafter.draft([DraftQuery(0, tokens, 3)]) == [[4, 5, 9]]


def test_ngram_draft_is_cut_at_n_and_at_the_end_of_the_sequence():
    drafter = NgramDrafter()
    assert drafter.draft([DraftQuery(0, [7, 8, 9, 7, 8], 1)]) == [[9]]
    drafter.reset(0)
    assert drafter.draft([DraftQuery(0, [7, 8, 7, 8], 10)]) == [[7, 8]]


def test_no_match_no_draft_and_sequences_do_not_mix():
    drafter = NgramDrafter()
    assert drafter.draft([DraftQuery(0, [1, 2, 3, 4], 4)]) == [[]]
    out = drafter.draft([DraftQuery(1, [5, 6, 0, 5, 6], 2), DraftQuery(2, [5, 6, 1, 5, 6], 2)])
    assert out == [[0, 5], [1, 5]]


def test_reset_forgets_the_old_request_of_a_slot():
    drafter = NgramDrafter()
    assert drafter.draft([DraftQuery(3, [1, 2, 9, 1, 2], 1)]) == [[9]]
    drafter.reset(3)
    assert drafter.draft([DraftQuery(3, [4, 1, 2], 1)]) == [[]]


def test_a_different_sequence_under_the_same_id_is_reindexed():
    drafter = NgramDrafter()
    drafter.draft([DraftQuery(0, [1, 2, 9, 1, 2], 1)])
    # Not a continuation of what was indexed (no reset): it must not draft the old 9.
    assert drafter.draft([DraftQuery(0, [1, 2, 8, 1, 2], 1)]) == [[8]]


def test_acceptance_follows_recent_verifications_from_the_pool_prior():
    pool = Acceptance(decay=0.98)
    seq = Acceptance(prior=pool)
    assert seq.rate() == pytest.approx(0.5)
    for _ in range(10):
        seq.observe(4, 4)
    assert seq.rate() > 0.9
    assert pool.rate() > 0.9  # the pool learned from it
    for _ in range(20):
        seq.observe(4, 0)  # one tested token each: slower to fall than 4 accepted to rise
    assert seq.rate() < 0.2
    fresh = Acceptance(prior=pool)
    assert 0.2 < fresh.rate() < 0.9  # a new sequence starts from what the pool saw


def test_row_cost_is_measured_against_a_plain_step_and_extrapolated():
    cost = RowCost()
    assert cost.need_plain_call()
    assert cost.cost(2) == pytest.approx(2 * RowCost.PRIOR_RATIO)
    cost.observe(0.010, 1, 0)  # a plain step: 10 ms per sequence
    assert not cost.need_plain_call()
    for _ in range(30):
        cost.observe(0.015, 1, 2)  # two drafted rows cost half a step
    assert cost.cost(2) == pytest.approx(0.5, rel=0.01)
    assert cost.cost(4) == pytest.approx(1.0, rel=0.01)  # from the nearest shorter measure
    for _ in range(64):
        cost.observe(0.015, 1, 2)
    assert cost.need_plain_call()  # time to measure a plain step again


def test_draft_length_follows_acceptance_and_cost():
    cheap, dear = RowCost(), RowCost()
    cheap.observe(0.01, 1, 0)
    dear.observe(0.01, 1, 0)
    for _ in range(20):
        cheap.observe(0.0103, 1, 1)  # a row costs 3% of a step (memory-bound machine)
        dear.observe(0.0195, 1, 1)  # 95% of a step (compute-bound)
    assert best_draft_length(0.05, cheap, 8) == 0
    assert best_draft_length(0.5, cheap, 8) >= 2
    assert best_draft_length(0.95, cheap, 8) == 8
    assert best_draft_length(0.5, dear, 8) == 0  # chat-like acceptance: never worth it
    assert best_draft_length(0.95, cheap, 3) == 3  # never past the room
