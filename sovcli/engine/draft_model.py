"""`DraftModelDrafter`: a small model sharing the target's vocabulary proposes tokens.

It owns its own llama.cpp model and context (one KV stream per sequence id, the same ids as the
engine's slots) and remembers, per sequence, the tokens its KV cells hold. Each `draft` call
keeps the longest prefix those cells share with the query's context, removes the rest, decodes
what is missing, then takes greedy steps (one row per sequence per llama_decode) until a
sequence has `n` tokens, its top token is unlikely (probability < `P_MIN`: the target would
mostly reject it and every later draft) or ends the generation. The drafted tokens' cells stay:
when the target accepts a prefix of the draft, the next call finds them in the common prefix
and decodes one or two tokens only.

Drafts of a sequence do not depend on what else is drafted in the same call (the rules of
sovcli/engine/reproducible.py): a catch-up of fewer than `MIN_PREFILL_ROWS` tokens shares a
llama_decode with other such catch-ups (at most `MAX_DECODE_ROWS` rows in all), a longer one gets
calls of its own, and greedy steps go in groups of at most `MAX_DECODE_ROWS` sequences, so every
row meets the same CPU kernels as it would alone. Long catch-ups gain nothing from sharing a call
(prompt rows are compute-bound); the short ones, the usual case, are batched.

Nothing here raises into the engine's decode loop: a query that cannot be drafted (unknown
sequence, a full context, a token outside the vocabulary, a failed llama_decode) gets [].
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sovcli.engine.reproducible import MAX_DECODE_ROWS, MIN_PREFILL_ROWS, prefill_chunk
from sovcli.engine.speculative import DraftQuery
from sovcli.errors import EngineError, UsageError
from sovcli.llamacpp import llama
from sovcli.settings import debug_enabled
from sovcli.system import physical_cores

P_MIN = 0.3  # a draft stops before a token whose probability under the draft model is lower
DRAFT_UBATCH = 512  # rows per llama_decode for long catch-ups (the first prompt of a request)
_OPEN = -2  # `_Draft.row` of a draft whose last token is still to be decoded (-1: closed)


@dataclass(frozen=True)
class VocabFingerprint:
    """What must match for two models to share token ids: size, token texts, BOS and EOS."""

    n_vocab: int
    sha256: str  # over every token's text, in id order
    bos: int
    eos: int
    name: str = field(default="", compare=False)  # the model it was read from, for messages

    def differences(self, other: VocabFingerprint) -> list[str]:
        """What differs from `other`, in words (empty when the vocabularies match)."""
        out = []
        if self.n_vocab != other.n_vocab:
            out.append(f"{self.n_vocab} tokens vs {other.n_vocab}")
        elif self.sha256 != other.sha256:
            out.append("the token texts differ")
        if self.bos != other.bos:
            out.append(f"BOS {self.bos} vs {other.bos}")
        if self.eos != other.eos:
            out.append(f"EOS {self.eos} vs {other.eos}")
        return out


def vocab_fingerprint(ll: Any, vocab: Any, *, name: str = "") -> VocabFingerprint:
    """The `VocabFingerprint` of a loaded llama.cpp vocabulary (`llama_model_get_vocab`)."""
    n_vocab = int(ll.llama_vocab_n_tokens(vocab))
    digest = hashlib.sha256()
    get_text = ll.llama_vocab_get_text
    for token in range(n_vocab):
        text = get_text(vocab, token) or b""
        digest.update(len(text).to_bytes(4, "little"))
        digest.update(text)
    return VocabFingerprint(
        n_vocab=n_vocab,
        sha256=digest.hexdigest(),
        bos=int(ll.llama_vocab_bos(vocab)),
        eos=int(ll.llama_vocab_eos(vocab)),
        name=name,
    )


def read_vocab_fingerprint(path: str) -> VocabFingerprint:
    """The `VocabFingerprint` of a GGUF file (only its vocabulary is loaded)."""
    ll = llama(verbose=debug_enabled())
    mparams = ll.llama_model_default_params()
    mparams.vocab_only = True
    model = ll.llama_model_load_from_file(os.fspath(path).encode("utf-8"), mparams)
    if not model:
        raise EngineError(
            f"llama.cpp could not read the vocabulary of {path}",
            hint="Is it a complete GGUF file? Rerun with SOVCLI_DEBUG=1 to see llama.cpp's log.",
        )
    try:
        vocab = ll.llama_model_get_vocab(model)
        return vocab_fingerprint(ll, vocab, name=os.path.basename(os.fspath(path)))
    finally:
        ll.llama_model_free(model)


def prefix_length(cached: list[int], tokens: list[int]) -> int:
    """Length of the longest common prefix of two token lists (slice comparisons run in C)."""
    lo, hi = 0, min(len(cached), len(tokens))
    if cached[:hi] == tokens[:hi]:
        return hi
    while hi - lo > 1:  # invariant: cached[:lo] == tokens[:lo] and cached[:hi] != tokens[:hi]
        mid = (lo + hi) // 2
        if cached[lo:mid] == tokens[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _chunk_sizes(total: int, ubatch: int) -> list[int]:
    """How a long catch-up of `total` rows is cut into calls: at most `ubatch` rows each, the
    last one never shorter than `MIN_PREFILL_ROWS` (a short chunk takes other kernels)."""
    sizes: list[int] = []
    while total > 0:
        sizes.append(prefill_chunk(total, ubatch))
        total -= sizes[-1]
    return sizes


class _Draft:
    """One query in flight: its sequence, the tokens still to decode, its draft so far."""

    __slots__ = ("budget", "cells", "failed", "index", "missing", "out", "row", "seq_id")

    def __init__(self, index: int, seq_id: int, cells: list[int], budget: int) -> None:
        self.index = index  # position of the query in the call
        self.seq_id = seq_id
        self.cells = cells  # the drafter's list of this sequence's cached tokens
        self.budget = budget
        self.missing: list[int] = []  # context tokens not in the KV cells yet
        self.out: list[int] = []
        self.row = -1  # batch index of the row whose logits give the next token, or _OPEN
        self.failed = False


class DraftModelDrafter:
    """A `Drafter` (sovcli/engine/speculative.py) backed by a small GGUF model."""

    def __init__(
        self,
        path: str,
        *,
        n_parallel: int,
        n_ctx: int,
        n_threads: int | None,
        target_vocab: VocabFingerprint,
    ) -> None:
        self._ll = ll = llama(verbose=debug_enabled())
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._lock = threading.Lock()
        if n_parallel < 1 or n_ctx < 1:
            raise UsageError("the draft model needs n_parallel >= 1 and n_ctx >= 1")
        path = os.fspath(path)
        name = os.path.basename(path)
        if not os.path.isfile(path):
            raise EngineError(
                f"draft model file not found: {path}", hint="Check --draft or pull the model."
            )
        self._load_model(path)
        self._vocab = ll.llama_model_get_vocab(self._model)
        own = vocab_fingerprint(ll, self._vocab, name=name)
        differences = own.differences(target_vocab)
        if differences:
            self.close()
            target = f" {target_vocab.name}" if target_vocab.name else ""
            raise EngineError(
                f"the draft model {name} does not share the vocabulary of the target model"
                f"{target} ({'; '.join(differences)})",
                hint="Pick a draft model of the same family (same tokenizer), or drop --draft.",
            )
        self.n_vocab = own.n_vocab
        self._create_context(n_parallel, n_ctx, n_threads or physical_cores())
        self._cells: list[list[int]] = [[] for _ in range(n_parallel)]  # what the KV cells hold
        self._known = [0] * n_parallel  # length of the last context each sequence was asked for

    # ------------------------------------------------------------------ loading
    def _load_model(self, path: str) -> None:
        ll = self._ll
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 999 if ll.llama_supports_gpu_offload() else 0
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = False  # repacked weights: a row's result depends on the batch
        self._model = ll.llama_model_load_from_file(path.encode("utf-8"), mparams)
        if not self._model:
            raise EngineError(
                f"llama.cpp could not load the draft model {path}",
                hint="Is it a complete GGUF file of a supported architecture? "
                "Rerun with SOVCLI_DEBUG=1 to see llama.cpp's log.",
            )

    def _create_context(self, n_parallel: int, n_ctx: int, n_threads: int) -> None:
        ll = self._ll
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_parallel
        cparams.n_batch = DRAFT_UBATCH
        cparams.n_ubatch = DRAFT_UBATCH
        cparams.n_seq_max = n_parallel
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.kv_unified = False
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise EngineError(
                "llama.cpp could not create a context for the draft model",
                hint="Lower --ctx or the number of parallel sequences (memory).",
            )
        self._mem = ll.llama_get_memory(self._ctx)
        self.n_parallel = n_parallel
        self.n_ctx = min(n_ctx, int(ll.llama_n_ctx_seq(self._ctx)))  # tokens per sequence
        self.n_ubatch = int(ll.llama_n_ubatch(self._ctx))
        self._batch = ll.llama_batch_init(max(self.n_ubatch, MAX_DECODE_ROWS), 0, 1)

    # ------------------------------------------------------------------ Drafter
    def reset(self, seq_id: int) -> None:
        """Forget sequence `seq_id`'s cells (a new request took the engine's slot)."""
        with self._lock:
            if self._ctx is not None and 0 <= seq_id < self.n_parallel:
                self._forget(seq_id)

    def draft(self, queries: list[DraftQuery]) -> list[list[int]]:
        """One greedy draft per query (in order), each at most `query.n` tokens, maybe none."""
        with self._lock:
            if self._ctx is None:
                return [[] for _ in queries]
            drafts = self._prepare(queries)
            self._catch_up(drafts)
            self._extend(drafts)
            out: list[list[int]] = [[] for _ in queries]
            for d in drafts:
                if not d.failed:
                    out[d.index] = d.out
            return out

    # ------------------------------------------------------------------ drafting
    def _prepare(self, queries: list[DraftQuery]) -> list[_Draft]:
        """The queries that can be drafted, in sequence order, trimmed to their common prefix."""
        drafts: list[_Draft] = []
        seen: set[int] = set()
        for index, query in enumerate(queries):
            seq_id = query.seq_id
            tokens = query.tokens
            budget = min(int(query.n), self.n_ctx - len(tokens))
            if not 0 <= seq_id < self.n_parallel or seq_id in seen or budget <= 0 or not tokens:
                continue
            seen.add(seq_id)
            cells = self._cells[seq_id]
            keep = min(self._shared(seq_id, tokens), len(tokens) - 1)  # the last row: logits
            missing = [int(t) for t in tokens[keep:]]
            if any(not 0 <= t < self.n_vocab for t in missing):
                continue  # llama.cpp would refuse the batch; nothing to draft from
            if keep < len(cells):
                self._ll.llama_memory_seq_rm(self._mem, seq_id, keep, -1)
                del cells[keep:]
            self._known[seq_id] = len(tokens)  # true once `missing` is decoded (else: reset)
            d = _Draft(index, seq_id, cells, budget)
            d.missing = missing
            drafts.append(d)
        drafts.sort(key=lambda d: d.seq_id)  # llama.cpp splits batches in sequence order
        return drafts

    def _shared(self, seq_id: int, tokens: Sequence[int]) -> int:
        """How many leading cells of `seq_id` hold `tokens`' first tokens.

        A list or tuple is compared in full (in C). Any other sequence (the engine's view of a
        job's context, whose items cost a Python call each) is trusted up to the length of the
        previous query: between `reset` calls a context only grows at its end.
        """
        cells = self._cells[seq_id]
        if isinstance(tokens, list):
            return prefix_length(cells, tokens)
        if isinstance(tokens, tuple):
            return prefix_length(cells, list(tokens))
        limit = min(len(cells), len(tokens))
        i = min(self._known[seq_id], limit)
        while i < limit and cells[i] == tokens[i]:
            i += 1
        return i

    def _catch_up(self, drafts: list[_Draft]) -> None:
        """Decode every missing context token (each sequence's last row picks its first draft)."""
        group: list[tuple[_Draft, int]] = []
        rows = 0
        for d in drafts:
            n = len(d.missing)
            if n >= MIN_PREFILL_ROWS:
                for size in _chunk_sizes(n, self.n_ubatch):
                    if not self._decode([(d, size)]):
                        break
                continue
            if rows + n > MAX_DECODE_ROWS:
                self._decode(group)
                group, rows = [], 0
            group.append((d, n))
            rows += n
        if group:
            self._decode(group)

    def _extend(self, drafts: list[_Draft]) -> None:
        """Greedy steps: decode each open draft's last token, one row per sequence."""
        while True:
            open_ = [d for d in drafts if d.row == _OPEN and not d.failed]
            if not open_:
                return
            for start in range(0, len(open_), MAX_DECODE_ROWS):
                group = open_[start : start + MAX_DECODE_ROWS]
                for d in group:
                    d.missing = [d.out[-1]]
                self._decode([(d, 1) for d in group])

    def _pick(self, d: _Draft) -> None:
        """Take the argmax of row `d.row`, or close the draft (unlikely or end of generation)."""
        import numpy as np

        ll = self._ll
        ptr = ll.llama_get_logits_ith(self._ctx, d.row)
        d.row = -1
        if not ptr:
            return
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token = int(logits.argmax())
        p_top = 1.0 / float(np.exp(logits - logits[token]).sum())
        if not p_top >= P_MIN or ll.llama_vocab_is_eog(self._vocab, token):  # NaN: stop too
            return
        d.out.append(token)
        if len(d.out) < d.budget:
            d.row = _OPEN  # its token must be decoded before the next pick

    def _decode(self, plan: list[tuple[_Draft, int]]) -> bool:
        """Decode the first `take` missing tokens of each draft in one llama_decode.

        A draft whose last missing token is decoded gets `row` (where its logits are). On
        failure every sequence of the call is reset and its draft dropped.
        """
        rows: list[tuple[int, int, int]] = []  # (token, position, sequence)
        for d, take in plan:
            base = len(d.cells)
            rows.extend((t, base + i, d.seq_id) for i, t in enumerate(d.missing[:take]))
            if take == len(d.missing):
                d.row = len(rows) - 1
        ll = self._ll
        batch = self._batch
        token, pos, n_seq_id, seq_id, logits = (
            batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        )  # fmt: skip
        for k, (t, p, s) in enumerate(rows):
            token[k], pos[k], n_seq_id[k], logits[k] = t, p, 1, 0
            seq_id[k][0] = s
        for d, _ in plan:
            if d.row >= 0:
                logits[d.row] = 1
        n = len(rows)
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            for d, _ in plan:
                self._forget(d.seq_id)
                d.failed = True
                d.row = -1
            return False
        for d, take in plan:
            d.cells.extend(d.missing[:take])
            del d.missing[:take]
        for d, _ in plan:
            if d.row >= 0:
                self._pick(d)  # now: the next llama_decode overwrites the logits
        return True

    def _forget(self, seq_id: int) -> None:
        self._ll.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
        self._cells[seq_id].clear()
        self._known[seq_id] = 0

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Free the context, batch and model (safe to call twice)."""
        with self._lock:
            ll = self._ll
            if self._batch is not None:
                ll.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx is not None:
                ll.llama_free(self._ctx)
                self._ctx = None
            if self._model is not None:
                ll.llama_model_free(self._model)
                self._model = None

    def __enter__(self) -> DraftModelDrafter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()
