"""Greedy output is batch-invariant: the same prompt gives the same bytes whatever else is
decoded with it (issue #14 item 5), and logit_bias steers sampling (issue #15).

The prompts are real text nobody here wrote (reproducible_texts.py, 300 characters each),
asked the way a user would; each answer is 48 tokens. The assertion is exact equality: that
is the feature. Sized to stay sensitive: with `reproducible=False` the 8 answers decoded
together differed from those decoded alone for 5-7 of 8, staggered for 3-5 (measured
2026-11-30 with 250-400 characters and 32-48 tokens).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from reproducible_texts import real_texts

from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams
from sovcli.errors import UsageError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the real model

TOKENS = 48
CHARS = 300
GREEDY = SamplingParams(temperature=0.0)


def questions(engine, count: int) -> list[GenerationRequest]:
    """One chat request per passage, as a user would ask it."""
    asks = ("Summarise this for a manager:", "What does this text require?", "Explain simply:")
    return [
        GenerationRequest(
            engine.render_chat([{"role": "user", "content": f"{asks[i % 3]}\n\n{text}"}]),
            max_tokens=TOKENS,
            sampling=GREEDY,
            ignore_eos=True,
        )
        for i, (_, text) in enumerate(real_texts(count, chars=CHARS))
    ]


@pytest.fixture(scope="module")
def engines(smollm2_gguf: Path):
    """A 1-slot and an 8-slot reproducible engine on the real model."""
    from sovcli.engine.core import Engine

    def make(parallel: int) -> Engine:
        config = EngineConfig(
            model_path=str(smollm2_gguf),
            n_parallel=parallel,
            n_ctx=640,
            n_threads=1,
            reproducible=True,
        )
        return Engine(config)

    one, eight = make(1), make(8)
    yield one, eight
    one.close()
    eight.close()


@pytest.fixture(scope="module")
def alone(engines) -> list[str]:
    """Each request decoded on its own, one after the other."""
    one, _ = engines
    return [one.generate(request).text for request in questions(one, 8)]


def test_eight_together_give_the_bytes_of_each_alone(engines, alone):
    _, eight = engines
    together = [s.result().text for s in eight.submit_many(questions(eight, 8))]
    assert len({len(t) for t in alone}) > 1 or alone[0]  # real, distinct answers
    assert together == alone


def test_staggered_arrivals_and_other_traffic_do_not_change_the_bytes(engines, alone):
    """Requests arrive while others decode (prompt chunks share steps with decode tokens),
    next to sampled requests of other lengths: the greedy answers stay the same."""
    _, eight = engines
    noise = GenerationRequest(
        eight.render_chat([{"role": "user", "content": "Write a poem about the sea."}]),
        max_tokens=37,
        sampling=SamplingParams(temperature=0.9, seed=7),
    )
    streams = []
    for i, request in enumerate(questions(eight, 8)):
        streams.append(eight.submit(request))
        if i % 3 == 0:
            eight.submit(noise)
        time.sleep(0.05 * (i % 4))
    assert [s.result().text for s in streams] == alone


def test_a_concurrent_process_hammering_the_cpu_changes_nothing(engines, alone):
    """Load from other threads (another engine decoding at the same time) changes timing and
    the batches the 8-slot engine forms, never the bytes."""
    one, eight = engines
    stop = threading.Event()

    def hammer() -> None:
        request = questions(one, 1)[0]
        while not stop.is_set():
            one.generate(GenerationRequest(request.prompt, max_tokens=16, sampling=GREEDY))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        requests = questions(eight, 8)
        first = [s.result().text for s in eight.submit_many(requests[:3])]
        rest = [s.result().text for s in eight.submit_many(requests[3:])]
    finally:
        stop.set()
        thread.join()
    assert first + rest == alone


def test_a_follow_up_turn_reusing_the_cache_gives_the_bytes_of_a_fresh_run(engines):
    """Turn 2 starts with turn 1's prompt and answer, which the slot still holds: only the
    cells computed as prompt rows are reused (an answer's cells were computed one row at a
    time), so the warm answer is the one a fresh engine gives."""
    one, eight = engines
    _, text = real_texts(1)[0]
    turn = [{"role": "user", "content": f"What does this text require?\n\n{text}"}]
    answer = one.generate(GenerationRequest(one.render_chat(turn), max_tokens=48, sampling=GREEDY))
    turn += [
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "Say it again in one sentence."},
    ]
    request = GenerationRequest(one.render_chat(turn), max_tokens=48, sampling=GREEDY)
    warm = one.generate(request)
    cold = eight.generate(GenerationRequest(request.prompt, max_tokens=48, sampling=GREEDY))
    assert warm.cached_prompt_tokens > 100 and warm.text == cold.text


# --- logit_bias ---------------------------------------------------------------------------


def test_banning_the_greedy_first_token_changes_it(engines):
    one, _ = engines
    prompt = one.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    plain = one.generate(GenerationRequest(prompt, max_tokens=1, sampling=GREEDY))
    first = one.tokenize(plain.text, add_special=False, parse_special=False)[0]
    banned = SamplingParams(temperature=0.0, logit_bias={first: -100})
    steered = one.generate(GenerationRequest(prompt, max_tokens=1, sampling=banned))
    assert plain.text and steered.text and steered.text != plain.text
    favoured = SamplingParams(temperature=0.0, logit_bias={first: -100, 1024: 100})
    forced = one.generate(GenerationRequest(prompt, max_tokens=1, sampling=favoured))
    assert forced.text == one.detokenize([1024])


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ({49152: 1.0}, "outside the vocabulary"),
        ({-1: 1.0}, "outside the vocabulary"),
        ({5: 100.5}, "[-100, 100]"),
        ({5: float("nan")}, "[-100, 100]"),
    ],
)
def test_logit_bias_out_of_range_is_a_usage_error(engines, bias, message):
    one, _ = engines
    request = GenerationRequest("Hello", max_tokens=1, sampling=SamplingParams(logit_bias=bias))
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        one.submit(request)
