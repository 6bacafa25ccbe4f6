"""The draft model as a source of speculative tokens (sovcli/engine/draft_model.py).

The model tests use the real SmolLM2 file as both draft and target: a draft model that is the
target itself must propose the target's own greedy continuation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sovcli.engine.draft_model import (
    DraftModelDrafter,
    VocabFingerprint,
    _chunk_sizes,
    prefix_length,
    read_vocab_fingerprint,
)
from sovcli.engine.speculative import DraftQuery
from sovcli.errors import EngineError

N_CTX = 512
DOCUMENT = (
    "MEMO. To: all branch managers. From: compliance. Subject: retention of customer records. "
    "Effective 1 March, paper files older than seven years are to be shredded on site by an "
    "approved contractor, and the certificate of destruction filed with the regional office. "
    "Electronic records follow the same schedule; the archive team runs the deletion job."
)
PROMPTS = [
    f"Summarise this memo in two sentences.\n\n{DOCUMENT}",
    f"Rewrite this memo in plain words.\n\n{DOCUMENT}",
    f'Extract the effective date and the subject as JSON {{"date": ..., "subject": ...}}.\n\n'
    f"{DOCUMENT}",
    "Name three colours and say which one you like best.",
]

# The start of each answer: the first token of an answer is seldom confident enough to draft.
STARTS = ["The memo says", "MEMO. To: all", '{\n  "date": "1', "The most obvious colour"]


class _View(Sequence[int]):
    """A context the way the engine passes it: a Sequence that is not a list (no C slicing)."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index: Any) -> Any:
        return self._tokens[index]


@pytest.fixture(scope="module")
def target_fp(smollm2_gguf: Path) -> VocabFingerprint:
    return read_vocab_fingerprint(str(smollm2_gguf))


@pytest.fixture(scope="module")
def drafter(smollm2_gguf: Path, target_fp: VocabFingerprint) -> Iterator[DraftModelDrafter]:
    d = DraftModelDrafter(
        str(smollm2_gguf), n_parallel=4, n_ctx=N_CTX, n_threads=1, target_vocab=target_fp
    )
    yield d
    d.close()


@pytest.fixture(scope="module")
def plain(smollm2_gguf: Path) -> Iterator:
    """The target: a plain engine, no speculation."""
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig

    eng = Engine(
        EngineConfig(
            model_path=str(smollm2_gguf),
            n_parallel=1,
            n_ctx=N_CTX,
            n_threads=1,
            speculative="off",
        )
    )
    yield eng
    eng.close()


def _prompt_tokens(engine: Any, text: str) -> list[int]:
    from sovcli.engine.types import GenerationRequest

    chat = engine.render_chat([{"role": "user", "content": text}])
    return engine.prompt_tokens(GenerationRequest(prompt=chat))


def _context(engine: Any, i: int) -> list[int]:
    """Prompt `i` and the start of its answer."""
    return _prompt_tokens(engine, PROMPTS[i]) + engine.tokenize(
        STARTS[i], add_special=False, parse_special=False
    )


def _greedy(engine: Any, tokens: list[int], n: int) -> list[int]:
    """The target's greedy continuation of `tokens` (token ids, `n` at most)."""
    from sovcli.engine.types import GenerationRequest, SamplingParams

    stream = engine.submit(
        GenerationRequest(prompt=tokens, max_tokens=n, sampling=SamplingParams(temperature=0))
    )
    out = [t for event in stream for t in event.token_ids]
    stream.result()
    return out


# ---------------------------------------------------------------------------- no model
def test_prefix_length() -> None:
    assert prefix_length([], [1, 2]) == 0
    assert prefix_length([1, 2, 3], [1, 2, 3]) == 3
    assert prefix_length([1, 2, 3, 4], [1, 2]) == 2
    assert prefix_length([1, 2], [1, 2, 3]) == 2
    for cut in range(0, 40):
        a = list(range(40))
        b = [*a[:cut], -1, *a[cut + 1 :]]
        assert prefix_length(a, b) == cut


def test_long_catch_ups_never_end_with_a_short_chunk() -> None:
    for total in range(8, 1300):
        sizes = _chunk_sizes(total, 512)
        assert sum(sizes) == total
        assert all(8 <= size <= 512 for size in sizes), (total, sizes)


def test_fingerprint_differences_name_what_differs() -> None:
    fp = VocabFingerprint(n_vocab=100, sha256="a" * 64, bos=1, eos=2, name="x.gguf")
    assert fp.differences(VocabFingerprint(100, "a" * 64, 1, 2, name="other")) == []
    assert fp.differences(VocabFingerprint(100, "b" * 64, 1, 2)) == ["the token texts differ"]
    assert fp.differences(VocabFingerprint(101, "b" * 64, 1, 3)) == [
        "100 tokens vs 101",
        "EOS 2 vs 3",
    ]


def test_missing_draft_file_is_a_one_line_error(tmp_path: Path) -> None:
    fp = VocabFingerprint(n_vocab=1, sha256="", bos=0, eos=0)
    with pytest.raises(EngineError) as info:
        DraftModelDrafter(
            str(tmp_path / "nope.gguf"), n_parallel=1, n_ctx=64, n_threads=1, target_vocab=fp
        )
    assert "draft model file not found" in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_vocabulary_mismatch_is_refused(smollm2_gguf: Path, target_fp: VocabFingerprint) -> None:
    other = VocabFingerprint(
        n_vocab=target_fp.n_vocab,
        sha256="0" * 64,
        bos=target_fp.bos,
        eos=target_fp.eos,
        name="gemma-3-270m.gguf",
    )
    with pytest.raises(EngineError) as info:
        DraftModelDrafter(
            str(smollm2_gguf), n_parallel=1, n_ctx=64, n_threads=1, target_vocab=other
        )
    message = str(info.value)
    assert message.startswith(
        f"the draft model {smollm2_gguf.name} does not share the vocabulary of the target "
        "model gemma-3-270m.gguf"
    )
    assert "token texts differ" in message and "\n" not in message
    assert info.value.hint and "same family" in info.value.hint


@pytest.mark.slow
def test_drafts_follow_the_targets_greedy_continuation(drafter, plain) -> None:
    """The same file as draft and target: >= 90% of drafted tokens are the target's own."""
    agreed = drafted = generated = 0
    for seq_id, text in enumerate(PROMPTS[:3]):
        prompt = _prompt_tokens(plain, text)
        reference = _greedy(plain, prompt, 48)
        drafter.reset(seq_id)
        context = prompt + reference[:1]
        i = 1
        while i < len(reference):  # the engine's loop: keep the agreeing prefix + one token
            draft = drafter.draft([DraftQuery(seq_id, _View(context), 6)])[0]
            expected = reference[i : i + len(draft)]
            same = 0
            while same < len(expected) and draft[same] == expected[same]:
                same += 1
            agreed += sum(a == b for a, b in zip(draft, expected, strict=False))
            drafted += len(draft)
            context += reference[i : i + same + 1]
            i += same + 1
        generated += len(reference)
    assert drafted >= generated // 2  # it does draft
    assert agreed >= 0.9 * drafted


def _rounds(drafter: DraftModelDrafter, prompts: list[list[int]], batched: bool) -> list:
    """Three drafting rounds over several sequences; after each round a sequence keeps half its
    draft and gets 1, 5 or 9 new tokens (catch-ups batched together, and one of its own)."""
    contexts = [list(p) for p in prompts]
    extra = [[198], [28, 253, 1347, 282, 30], [1030, 314, 260, 3256, 28, 288, 2536, 282, 30]]
    budgets = [4, 8, 6, 3]
    seen = []
    for seq_id in range(len(prompts)):
        drafter.reset(seq_id)
    for _ in range(3):
        queries = [
            DraftQuery(seq_id, _View(ctx), budgets[seq_id]) for seq_id, ctx in enumerate(contexts)
        ]
        drafts = drafter.draft(queries) if batched else [drafter.draft([q])[0] for q in queries]
        seen.append(drafts)
        for seq_id, draft in enumerate(drafts):
            contexts[seq_id] += draft[: len(draft) // 2] + extra[seq_id % len(extra)]
    return seen


@pytest.mark.slow
def test_batched_drafts_equal_drafts_made_alone(drafter, plain) -> None:
    prompts = [_context(plain, i) for i in range(len(PROMPTS))]
    prompts[3] = prompts[3][:5]  # a short prompt: its first catch-up shares a call
    alone = _rounds(drafter, prompts, batched=False)
    together = _rounds(drafter, prompts, batched=True)
    assert sum(len(d) for r in alone for d in r) > 10
    assert together == alone


@pytest.mark.slow
def test_reset_then_another_prompt_gives_that_prompts_drafts(drafter, plain) -> None:
    first, second = _context(plain, 0), _context(plain, 1)
    drafter.reset(3)
    fresh = drafter.draft([DraftQuery(3, second, 8)])[0]
    assert fresh
    drafter.reset(0)
    drafter.draft([DraftQuery(0, first, 8)])
    drafter.draft([DraftQuery(0, [*first, 198], 8)])
    drafter.reset(0)
    assert drafter.draft([DraftQuery(0, _View(second), 8)])[0] == fresh


@pytest.mark.slow
def test_bad_queries_get_no_draft_and_never_raise(drafter, plain) -> None:
    prompt = _context(plain, 1)
    drafter.reset(1)
    good = drafter.draft([DraftQuery(1, prompt, 4)])[0]
    assert good
    drafter.reset(1)
    out = drafter.draft(
        [
            DraftQuery(9, prompt, 4),  # no such sequence
            DraftQuery(2, [*prompt, 10**9], 4),  # a token outside the vocabulary
            DraftQuery(0, list(range(N_CTX)), 4),  # the context is full
            DraftQuery(3, [], 4),  # nothing to draft from
            DraftQuery(1, prompt, 4),
            DraftQuery(1, prompt, 4),  # the same sequence twice
        ]
    )
    assert out == [[], [], [], [], good, []]


@pytest.mark.slow
def test_drafts_never_pass_the_end_of_the_context(smollm2_gguf: Path, target_fp, plain) -> None:
    counting = plain.tokenize("1, 2, " * 30, add_special=False)[:64]  # easy to continue
    with DraftModelDrafter(
        str(smollm2_gguf), n_parallel=1, n_ctx=64, n_threads=1, target_vocab=target_fp
    ) as d:
        assert len(d.draft([DraftQuery(0, counting[:40], 8)])[0]) == 8
        for free in (3, 2, 1, 0):
            assert len(d.draft([DraftQuery(0, counting[: 64 - free], 8)])[0]) == free
        assert d.draft([DraftQuery(0, [*counting, 28], 8)]) == [[]]  # longer than the context


class _FailingDecode:
    """The llama_cpp module, except that llama_decode fails."""

    def __init__(self, ll: Any) -> None:
        self._ll = ll

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ll, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        return 1


@pytest.mark.slow
def test_a_failed_decode_resets_the_sequence(drafter, plain) -> None:
    prompt = _context(plain, 0)
    drafter.reset(2)
    expected = drafter.draft([DraftQuery(2, prompt, 5)])[0]
    drafter.draft([DraftQuery(2, prompt + expected, 5)])
    real = drafter._ll
    drafter._ll = _FailingDecode(real)
    try:
        assert drafter.draft([DraftQuery(2, prompt + expected[:1] + [198], 5)]) == [[]]
    finally:
        drafter._ll = real
    assert drafter.draft([DraftQuery(2, prompt, 5)])[0] == expected  # from empty cells again


@pytest.mark.slow
def test_close_twice_and_draft_after_close(smollm2_gguf: Path, target_fp) -> None:
    d = DraftModelDrafter(
        str(smollm2_gguf), n_parallel=1, n_ctx=64, n_threads=1, target_vocab=target_fp
    )
    d.close()
    d.close()
    d.reset(0)
    assert d.draft([DraftQuery(0, [1, 2, 3], 4)]) == [[]]


@pytest.mark.slow
def test_engine_with_a_draft_model_gives_the_plain_greedy_output(smollm2_gguf: Path):
    """End to end: `--draft` on the target's own file changes no token and gets drafts accepted.

    Both engines are fresh, not reproducible (reproducible engines never draft) and answer one
    request at a time, so the drafts are the only difference between them."""
    from sovcli.engine.core import Engine
    from sovcli.engine.types import EngineConfig, GenerationRequest, SamplingParams

    def answers(**spec: Any) -> list:
        config = EngineConfig(
            model_path=str(smollm2_gguf), n_parallel=1, n_ctx=N_CTX, n_threads=1,
            reproducible=False, **spec,
        )  # fmt: skip
        with Engine(config) as engine:
            return [
                engine.generate(
                    GenerationRequest(
                        prompt=engine.render_chat([{"role": "user", "content": text}]),
                        max_tokens=48,
                        sampling=SamplingParams(temperature=0),
                    )
                )
                for text in PROMPTS
            ]

    expected = answers(speculative="off")
    results = answers(draft_model_path=str(smollm2_gguf))
    assert [r.text for r in results] == [r.text for r in expected]
    assert all(r.error is None for r in results)
    assert sum(r.accepted_tokens for r in results) > 0
    assert all(r.accepted_tokens <= r.drafted_tokens for r in results)
