"""The engine on the real SmolLM2 model: determinism, stops, UTF-8, batching, reuse, limits."""

from __future__ import annotations

import asyncio
import math

import pytest

from sovcli.engine.types import GenerationRequest, SamplingParams
from sovcli.errors import ContextOverflowError, UsageError

pytestmark = pytest.mark.slow  # the real model

GREEDY = SamplingParams(temperature=0.0)


def test_model_info_and_tokenizer_roundtrip(engine):
    info = engine.info
    assert info.architecture == "llama"
    assert info.n_vocab == 49152
    assert info.n_ctx >= 512
    assert info.chat_template and "im_start" in info.chat_template
    tokens = engine.tokenize("Hello world, café!", add_special=False)
    assert engine.detokenize(tokens) == "Hello world, café!"


def test_render_chat_uses_gguf_template_and_fallback(engine):
    from sovcli.engine import chat_template

    prompt = engine.render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    # A template that does not compile falls back to ChatML; one that escapes the sandbox fails.
    fallback = chat_template.render(
        "{% for %}", [{"role": "user", "content": "x"}], bos_token=None, eos_token=None
    )
    assert fallback == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(UsageError):
        chat_template.render(
            "{{ messages.__class__.__mro__[1].__subclasses__() }}",
            [{"role": "user", "content": "x"}],
            bos_token=None,
            eos_token=None,
        )


def test_greedy_is_deterministic_and_seed_is_reproducible(engine, chat_prompt):
    first = engine.generate(GenerationRequest(chat_prompt, max_tokens=12, sampling=GREEDY))
    second = engine.generate(GenerationRequest(chat_prompt, max_tokens=12, sampling=GREEDY))
    assert first.text and first.text == second.text
    assert first.completion_tokens == 12 or first.finish_reason == "stop"
    seeded = SamplingParams(temperature=1.0, seed=7)
    a = engine.generate(GenerationRequest("Once upon a time", max_tokens=10, sampling=seeded))
    b = engine.generate(GenerationRequest("Once upon a time", max_tokens=10, sampling=seeded))
    assert a.text == b.text


def test_stop_sequence_ends_generation_and_is_not_emitted(engine):
    request = GenerationRequest("The days of the week are Monday,", max_tokens=16, sampling=GREEDY)
    full = engine.generate(request).text
    assert len(full) > 8
    stop = full[4:7]
    expected = full[: full.index(stop)]
    events = list(
        engine.submit(
            GenerationRequest(
                "The days of the week are Monday,", max_tokens=16, sampling=GREEDY, stop=[stop]
            )
        )
    )
    assert events[-1].finish_reason == "stop"
    streamed = "".join(e.text for e in events)
    assert streamed == expected
    assert stop not in streamed


def test_utf8_streaming_never_emits_broken_characters(engine):
    target = "日本語 🙂 café ☃"
    # Force the output with a grammar so that multi-byte characters must be produced.
    grammar = 'root ::= "' + target + '"'
    pieces = [engine._piece(t) for t in engine.tokenize(target, add_special=False)]
    assert any(_is_partial_utf8(p) for p in pieces), "the test needs a split character"
    stream = engine.submit(
        GenerationRequest(
            "Say it:",
            max_tokens=40,
            sampling=SamplingParams(temperature=0.0, grammar=grammar),
        )
    )
    events = list(stream)
    assert all("\ufffd" not in e.text for e in events)
    assert "".join(e.text for e in events) == target
    assert stream.result().text == target
    # At least one token carried an incomplete character and was held back.
    assert any(e.token_ids and e.text == "" for e in events)


def _is_partial_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_four_sequences_batched_match_each_alone(engine):
    """Each sequence of a batch gets its own logits: the batched runs agree with the runs
    alone, and wherever one parts from the other it is at a near tie (batching may change the
    kernels on some CPUs; see greedy_agreement). Measured on AVX2: bit-identical, 40/40
    positions, with near ties of 0.002 and 0.009 nats the threshold leaves room for."""
    from greedy_agreement import GREEDY_TOP5, agreeing_prefix, run_of

    prompts = [
        engine.render_chat([{"role": "user", "content": q}])
        for q in ("What is rain?", "Count to five.", "Name a fruit.", "Say hello in French.")
    ]

    def request(prompt: str) -> GenerationRequest:
        return GenerationRequest(prompt, max_tokens=10, sampling=GREEDY_TOP5, ignore_eos=True)

    alone = [run_of(engine.submit(request(prompt))) for prompt in prompts]
    # Overwrite every slot's cache so the questions are evaluated together, not reused.
    junk = [engine.submit(GenerationRequest(f"Zebra {i}", max_tokens=2)) for i in range(4)]
    assert all(j.result().finish_reason in ("length", "stop") for j in junk)
    streams = [engine.submit(request(p)) for p in prompts]
    assert engine.stats().n_parallel == 4
    together = [run_of(s) for s in streams]
    agreed = sum(agreeing_prefix(a, b) for a, b in zip(alone, together, strict=True))
    assert agreed >= 0.6 * 4 * 10, f"batched runs agree with the runs alone at {agreed}/40"
    assert all(
        s.result().cached_prompt_tokens < len(engine.tokenize(p)) - 3
        for s, p in zip(streams, prompts, strict=True)
    )


def test_prefix_reuse_on_follow_up_turn(engine):
    history = [{"role": "user", "content": "My name is Ada. Remember it."}]
    first = engine.generate(
        GenerationRequest(engine.render_chat(history), max_tokens=8, sampling=GREEDY)
    )
    history += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "What is my name?"},
    ]
    follow = engine.generate(
        GenerationRequest(engine.render_chat(history), max_tokens=8, sampling=GREEDY)
    )
    assert follow.cached_prompt_tokens >= first.prompt_tokens - 1
    assert follow.cached_prompt_tokens < follow.prompt_tokens


def test_context_overflow_is_refused_and_full_context_ends_with_length(engine):
    n_ctx = engine.info.n_ctx
    with pytest.raises(ContextOverflowError):
        engine.submit(GenerationRequest("word " * (n_ctx + 10)))
    prompt = engine.tokenize("word " * (n_ctx - 6))[: n_ctx - 5]
    result = engine.generate(
        GenerationRequest(prompt, max_tokens=None, sampling=GREEDY, ignore_eos=True)
    )
    assert result.finish_reason == "length"
    assert result.prompt_tokens + result.completion_tokens <= n_ctx + 1


def test_chat_history_drops_oldest_turns_to_fit(engine):
    from sovcli.engine.conversation import fit_messages

    long_turn = "tell me more about it " * 40
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        messages += [
            {"role": "user", "content": f"{i} {long_turn}"},
            {"role": "assistant", "content": "ok"},
        ]
    messages.append({"role": "user", "content": "last question"})
    kept, prompt, dropped = fit_messages(engine, messages, reserve=64)
    assert dropped > 0
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last question"
    assert kept[1]["role"] == "user"
    assert len(engine.tokenize(prompt)) + 64 <= engine.info.n_ctx
    with pytest.raises(ContextOverflowError):
        fit_messages(engine, [{"role": "user", "content": long_turn * 3}], reserve=64)


def test_cancel_frees_the_slot_for_a_queued_request(engine):
    busy = [
        engine.submit(GenerationRequest(f"Story {i}:", max_tokens=400, ignore_eos=True))
        for i in range(4)
    ]
    queued = engine.submit(GenerationRequest("Hi", max_tokens=3, sampling=GREEDY))
    next(iter(busy[0]))  # the first one is generating
    assert engine.stats().queued_requests + engine.stats().active_sequences == 5
    busy[0].cancel()
    done = queued.result(timeout=300)
    assert done.finish_reason in ("length", "stop")
    for stream in busy:
        stream.cancel()
    results = [s.result(timeout=300) for s in busy]
    assert results[0].finish_reason == "cancelled"
    assert all(r.finish_reason == "cancelled" for r in results)
    assert all(r.completion_tokens < 400 for r in results)
    assert engine.stats().active_sequences == 0


def test_async_iteration_and_logprobs(engine):
    async def collect():
        stream = engine.submit(
            GenerationRequest(
                "The capital of France is",
                max_tokens=4,
                sampling=SamplingParams(temperature=0.0, logprobs=3),
            )
        )
        return [event async for event in stream], stream.result()

    events, result = asyncio.run(collect())
    assert events[-1].finish_reason == "length"
    assert "".join(e.text for e in events) == result.text
    assert len(result.logprobs) == 4
    first = result.logprobs[0]
    assert first.logprob <= 0 and len(first.top) == 3
    assert first.top[0][1] >= first.top[1][1]
    # Greedy picks the most likely token.
    assert math.isclose(first.logprob, first.top[0][1], rel_tol=1e-6)


def test_embed_returns_unit_vectors(engine):
    vectors = engine.embed(["a cat sat on the mat", "a cat sat on the mat", "quarterly revenue"])
    assert len(vectors) == 3 and len(vectors[0]) == engine.info.n_embd
    for v in vectors:
        assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4)
    same = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    other = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert same > 0.999 and other < same


def test_bad_requests_raise_usage_errors(engine):
    with pytest.raises(UsageError):
        engine.submit(GenerationRequest("x", sampling=SamplingParams(temperature=-1)))
    with pytest.raises(UsageError):
        engine.submit(GenerationRequest([10**9]))
    # a grammar llama.cpp cannot parse is refused before it is queued (a 400 even for a stream)
    with pytest.raises(UsageError, match="grammar could not be parsed"):
        engine.submit(GenerationRequest("x", sampling=SamplingParams(grammar="root ::= (")))
    assert engine.generate(GenerationRequest("Say hi", max_tokens=2)).finish_reason in (
        "stop",
        "length",
    )


def test_text_that_is_not_valid_unicode_is_a_usage_error(engine):
    """A lone surrogate (from a JSON escape or a mis-decoded file) is refused, not a crash."""
    with pytest.raises(UsageError, match="not valid Unicode"):
        engine.tokenize("Hello \ud800 world")
    with pytest.raises(UsageError, match="not valid Unicode"):
        engine.generate(GenerationRequest("Say \udcff", max_tokens=4))
    assert engine.generate(GenerationRequest("Say hi", max_tokens=2)).finish_reason in (
        "stop",
        "length",
    )
