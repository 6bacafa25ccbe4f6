"""`Engine`: one llama.cpp context, many sequences, continuous batching.

A background thread owns the context. Each step it builds ONE `llama_batch` holding the next
token of every generating sequence plus prompt chunks of newly admitted ones, calls
`llama_decode` once, and samples each sequence's next token with its own C sampler chain.
Finished sequences leave their tokens in the KV cache of their slot; a new request takes the
idle slot sharing the longest prefix with its prompt and only the diverging tail is removed.
With `prompt_cache_mib`, a slot's sequence is copied to RAM before its cells are reused, and
a later prompt that shares more with a saved state than with any slot gets it copied back.
A `reproducible` engine (the default) shapes its llama_decode calls so that a sequence's
output does not depend on the others (sovcli/engine/reproducible.py).
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from sovcli.engine import chat_template
from sovcli.engine.prompt_cache import PromptCache, common_prefix
from sovcli.engine.reproducible import (
    MAX_DECODE_ROWS,
    MIN_PREFILL_ROWS,
    default_reproducible,
    prefill_chunk,
)
from sovcli.engine.speculative import (
    Acceptance,
    Drafter,
    DraftQuery,
    NgramDrafter,
    RowCost,
    best_draft_length,
    resolve_mode,
)
from sovcli.engine.stream import TokenStream, WakeBatch
from sovcli.engine.textstream import TextAssembler
from sovcli.engine.types import (
    ChatMessage,
    EngineConfig,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from sovcli.errors import ContextOverflowError, EngineError, UsageError
from sovcli.llamacpp import llama
from sovcli.settings import debug_enabled
from sovcli.system import physical_cores

DEFAULT_MAX_CTX = 4096
# A sequence shorter than this is not worth saving in the prompt cache; a cached state is
# restored when it saves decoding at least PROMPT_CACHE_MIN_GAIN more prompt tokens than the
# slot's own cells (restoring ~130 tokens of a 135M model takes ~3 ms; decoding them ~1 s).
PROMPT_CACHE_MIN_TOKENS = 16
PROMPT_CACHE_MIN_GAIN = 4
# A sequence whose drafts do not pay still drafts one token after EXPLORE_EVERY steps without
# (when its drafter has one), so that it notices when its text turns to copying; each rejected
# try doubles the wait, up to EXPLORE_MAX steps, so chat-like text pays at most ~1% for it.
EXPLORE_EVERY = 32
EXPLORE_MAX = 512
_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: pick a random seed


class _Job:
    """A request in flight (queued or decoding)."""

    __slots__ = (
        "acceptance",
        "accepted",
        "assembler",
        "batch_index",
        "cancelled",
        "drafted",
        "drafts",
        "explore_every",
        "generated",
        "idle_steps",
        "logprobs",
        "max_tokens",
        "n_cached",
        "next_token",
        "pending",
        "prompt",
        "request",
        "sampler",
        "slot",
        "stream",
        "t_first",
        "t_prompt_done",
        "t_start",
        "t_submit",
    )

    def __init__(self, request: GenerationRequest, prompt: list[int], stream: TokenStream) -> None:
        self.request = request
        self.prompt = prompt
        self.stream = stream
        self.pending: list[int] = []
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.assembler = TextAssembler(request.stop)
        self.max_tokens = request.max_tokens
        self.n_cached = 0
        self.next_token: int | None = None
        self.batch_index = -1
        self.sampler: Any = None
        self.slot: _Slot | None = None
        self.drafts: list[int] = []  # drafted tokens riding with next_token this step
        self.drafted = 0
        self.accepted = 0
        self.acceptance = Acceptance()  # replaced in `_start` by one backed by the engine's pool
        self.idle_steps = 0  # steps since it last drafted
        self.explore_every = EXPLORE_EVERY  # doubles after each try that is rejected
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_start = 0.0
        self.t_first = 0.0
        self.t_prompt_done = 0.0


class _Slot:
    """One sequence id of the context and the tokens its KV cells hold."""

    __slots__ = ("cached", "job", "last_used", "prefilled", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        # How many leading cells were decoded as prompt rows (not sampled one at a time):
        # in reproducible mode only those are reused for a later prompt's prefix.
        self.prefilled = 0
        self.job: _Job | None = None
        self.last_used = 0.0


class Engine:
    """The shared inference engine (see `sovcli.engine.types.EngineProtocol`)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._ll = ll = llama(verbose=config.verbose or debug_enabled())
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._embed_ctx: Any = None
        self._embed_lock = threading.Lock()
        self._closed = False
        # Batch-invariant decoding (see sovcli/engine/reproducible.py).
        self.reproducible = (
            default_reproducible() if config.reproducible is None else config.reproducible
        )
        if config.n_parallel < 1:
            raise UsageError("n_parallel must be at least 1")
        self.speculative = resolve_mode(
            config.speculative, reproducible=self.reproducible, draft=bool(config.draft_model_path)
        )
        if not 0 <= config.draft_max <= 64:
            raise UsageError("draft_max must be between 0 and 64")
        path = os.fspath(config.model_path)
        if not os.path.isfile(path):
            raise EngineError(f"model file not found: {path}", hint="Check the path or pull it.")

        mparams = ll.llama_model_default_params()
        n_gpu = config.n_gpu_layers
        if n_gpu is None:
            n_gpu = 999 if ll.llama_supports_gpu_offload() else 0
        mparams.n_gpu_layers = n_gpu
        mparams.use_mmap = config.use_mmap
        mparams.use_mlock = config.use_mlock
        if self.reproducible and hasattr(mparams, "use_extra_bufts"):
            # Repacked weights (Q4_0, Q4_K, IQ4_NL... on AVX2/AVX-512/NEON) are multiplied by
            # a GEMM kernel in groups of 4 rows and a GEMV kernel for the rest: a row's result
            # then depends on how many other rows share the batch. Plain quantized weights use
            # one dot-product kernel per row whatever the batch.
            mparams.use_extra_bufts = False
        self._model = ll.llama_model_load_from_file(path.encode("utf-8"), mparams)
        if not self._model:
            raise EngineError(
                f"llama.cpp could not load {path}",
                hint="Is it a complete GGUF file of a supported architecture? "
                "Rerun with SOVCLI_DEBUG=1 to see llama.cpp's log.",
            )
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        n_ctx_train = ll.llama_model_n_ctx_train(self._model)

        n_ctx_seq = config.n_ctx or min(n_ctx_train or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
        self.n_threads = config.n_threads or physical_cores()
        self.n_threads_batch = config.n_threads_batch or self.n_threads
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * config.n_parallel
        cparams.n_batch = config.n_batch
        cparams.n_ubatch = min(config.n_ubatch, config.n_batch)
        cparams.n_seq_max = config.n_parallel
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads_batch
        if self.reproducible:
            # CPU flash attention picks its kernel by batch shape (tiled for >= 64 query rows of
            # a sequence, per-row below; split over threads for one lone sequence with >= 512
            # KV cells): the same prompt gets other logits next to other sequences. Without it,
            # every row takes the same kernels whatever shares the step.
            cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        elif config.flash_attn is None:
            cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
        else:
            cparams.flash_attn_type = (
                ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if config.flash_attn
                else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        # One KV stream per sequence: a sequence's attention reads only its own cells (with
        # `reproducible`, its logits are then bitwise those it gets decoded alone). A unified
        # pool makes attention take another path and measured no faster once
        # `_step` orders its batch by sequence id (0.99x against 1.01x of llama-server,
        # scripts/compare_servers.py, SmolLM2 Q4_1, 2 cores).
        cparams.kv_unified = False
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self._free_model()
            raise EngineError(
                "llama.cpp could not create a context for this model",
                hint="Lower --ctx or the number of parallel sequences (memory).",
            )
        self._mem = ll.llama_get_memory(self._ctx)
        self.n_ctx = min(n_ctx_seq, ll.llama_n_ctx_seq(self._ctx))  # tokens per sequence
        self.n_batch = ll.llama_n_batch(self._ctx)
        self.n_ubatch = ll.llama_n_ubatch(self._ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, config.n_parallel)
        self.info = self._read_info(path, n_ctx_train)
        self._add_bos = self.info.add_bos
        self._piece_cache: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._wake = WakeBatch()  # async readers to wake once the step's tokens are out
        self.prompt_cache = PromptCache(config.prompt_cache_mib * 2**20)

        self._slots = [_Slot(i) for i in range(config.n_parallel)]
        self._queue: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._totals = {
            "prompt": 0,
            "cached": 0,
            "generated": 0,
            "requests": 0,
            "drafted": 0,
            "accepted": 0,
        }
        self._drafter: Drafter | None = None
        self._row_cost = RowCost()
        self._acceptance_pool = Acceptance(decay=0.98)
        try:
            self._drafter = self._make_drafter()
        except BaseException:
            self._free_context()
            raise
        self._thread = threading.Thread(target=self._run, name="sovcli-decode", daemon=True)
        self._thread.start()

    def _make_drafter(self) -> Drafter | None:
        """The source of speculative tokens: a draft model, n-grams (`auto`), or none."""
        config = self.config
        if config.draft_model_path:  # resolve_mode refused a draft model with speculation off
            from sovcli.engine.draft_model import DraftModelDrafter, vocab_fingerprint

            return DraftModelDrafter(
                os.fspath(config.draft_model_path),
                n_parallel=config.n_parallel,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                target_vocab=vocab_fingerprint(
                    self._ll, self._vocab, name=os.path.basename(os.fspath(config.model_path))
                ),
            )
        if self.speculative != "off" and config.draft_max > 0:
            return NgramDrafter()
        return None

    def _free_context(self) -> None:
        """Free the batch, the context and the model (a failed start)."""
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._ll.llama_free(self._ctx)
            self._ctx = None
        self._free_model()

    # ------------------------------------------------------------------ model facts
    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _all_meta(self) -> dict[str, str]:
        ll = self._ll
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(512)
        for i in range(ll.llama_model_meta_count(self._model)):
            if ll.llama_model_meta_key_by_index(self._model, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            if key.startswith("tokenizer.ggml.") and key not in (
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
            ):
                continue  # token lists are huge
            if key == "tokenizer.chat_template":
                continue
            value = self._meta(key)
            if value is not None:
                out[key] = value[:1000]
        return out

    def _token_text(self, token: int) -> str | None:
        if token < 0:
            return None
        raw = self._ll.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else None

    def _read_info(self, path: str, n_ctx_train: int) -> ModelInfo:
        ll = self._ll
        template_ptr = ll.llama_model_chat_template(self._model, None)
        template = template_ptr.decode("utf-8", errors="replace") if template_ptr else None
        metadata = self._all_meta()
        name = metadata.get("general.name") or os.path.splitext(os.path.basename(path))[0]
        return ModelInfo(
            path=path,
            name=name,
            architecture=metadata.get("general.architecture", "unknown"),
            n_params=int(ll.llama_model_n_params(self._model)),
            n_ctx_train=int(n_ctx_train),
            n_ctx=int(self.n_ctx),
            n_vocab=int(self._n_vocab),
            n_embd=int(ll.llama_model_n_embd(self._model)),
            chat_template=template,
            bos_token=self._token_text(ll.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(ll.llama_vocab_eos(self._vocab)),
            add_bos=bool(ll.llama_vocab_get_add_bos(self._vocab)),
            metadata=metadata,
        )

    # ------------------------------------------------------------------ text <-> tokens
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text` (BOS added when `add_special` and the model wants one).

        Text that is not valid Unicode (a lone surrogate from a JSON escape or a mis-decoded
        file) is a UsageError naming the position, never an internal error.
        """
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(
                f"the text is not valid Unicode: {exc.object[exc.start : exc.end]!r} "
                f"at character {exc.start}",
                hint="Send UTF-8 text; a lone surrogate (e.g. \\ud800) cannot be encoded.",
            ) from None
        n_max = len(data) + 8
        buf = (ctypes.c_int32 * n_max)()
        n = self._ll.llama_tokenize(
            self._vocab, data, len(data), buf, n_max, add_special, parse_special
        )
        if n < 0:
            n_max = -n
            buf = (ctypes.c_int32 * n_max)()
            n = self._ll.llama_tokenize(
                self._vocab, data, len(data), buf, n_max, add_special, parse_special
            )
        if n < 0:
            raise EngineError("tokenization failed")
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            buf = self._piece_buf
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            self._piece_cache[token] = piece
        return piece

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens` (special tokens left out), invalid UTF-8 replaced.

        Ids outside the vocabulary are a UsageError: llama.cpp would abort the process.
        """
        pieces = (self._piece(t) for t in self._checked_ids(tokens))
        return b"".join(pieces).decode("utf-8", errors="replace")

    def _checked_ids(self, tokens: list[int]) -> list[int]:
        """`tokens` as ints, or a UsageError naming the first id outside the vocabulary."""
        ids = [int(t) for t in tokens]
        bad = next((t for t in ids if not 0 <= t < self._n_vocab), None)
        if bad is not None:
            raise UsageError(f"token id {bad} is outside the vocabulary (0..{self._n_vocab - 1})")
        return ids

    def render_chat(
        self,
        messages: list[ChatMessage] | list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt for `messages` with the GGUF's chat template (ChatML when it has none)."""
        return chat_template.render(
            self.info.chat_template,
            messages,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
        )

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens `request` would evaluate (what `submit` checks against the context)."""
        if isinstance(request.prompt, str):
            add_bos = request.add_bos and self._add_bos
            bos = self.info.bos_token
            if add_bos and bos and request.parse_special and request.prompt.startswith(bos):
                add_bos = False  # the template already put BOS in the text
            tokens = self.tokenize(
                request.prompt, add_special=add_bos, parse_special=request.parse_special
            )
        else:
            tokens = self._checked_ids(request.prompt)
        return tokens

    # ------------------------------------------------------------------ requests
    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue `request` and return its stream at once; ContextOverflowError if it cannot fit."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest]) -> list[TokenStream]:
        """Queue several requests at once: they are admitted together, in the same decode step.

        All are checked first; if one is invalid, none is queued.
        """
        if self._closed:
            raise EngineError("the engine is closed")
        jobs = [self._prepare(request) for request in requests]
        with self._cond:
            if self._closed:
                raise EngineError("the engine is closed")
            self._queue.extend(jobs)
            self._cond.notify_all()
        return [job.stream for job in jobs]

    def _check_grammar(self, s: SamplingParams) -> None:
        """A UsageError, before the request is queued (so a 400 even for a stream), when
        llama.cpp cannot parse the grammar."""
        ll = self._ll
        grammar = ll.llama_sampler_init_grammar(
            self._vocab, s.grammar.encode("utf-8"), s.grammar_root.encode("utf-8")
        )
        if not grammar:
            raise UsageError(
                "the grammar could not be parsed (GBNF syntax error)",
                hint="Check the JSON schema or grammar; SOVCLI_DEBUG=1 shows llama.cpp's reason.",
            )
        ll.llama_sampler_free(grammar)

    def _prepare(self, request: GenerationRequest) -> _Job:
        """Validate and tokenize `request` into a job (not queued yet)."""
        self.validate_sampling(request.sampling)
        if request.sampling.grammar:
            self._check_grammar(request.sampling)
        if request.max_tokens is not None and request.max_tokens < 0:
            raise UsageError("max_tokens must be >= 0")
        tokens = self.prompt_tokens(request)
        if not tokens:
            raise UsageError("the prompt is empty", hint="Give a prompt with at least one token.")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}"
            )
        if request.request_id is None:
            request.request_id = f"req-{next(self._ids)}"
        return _Job(request, tokens, TokenStream(request.request_id, self._on_cancel))

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run `request` to the end and return its result (blocking)."""
        stream = self.submit(request)
        for _ in stream:
            pass
        return stream.result()

    def stats(self) -> EngineStats:
        """Current load: generating sequences, waiting requests, slot count and totals."""
        with self._cond:
            return EngineStats(
                active_sequences=len(self._active),
                queued_requests=len(self._queue),
                n_parallel=self.config.n_parallel,
                requests_total=self._totals["requests"],
                prompt_tokens_total=self._totals["prompt"],
                cached_prompt_tokens_total=self._totals["cached"],
                generated_tokens_total=self._totals["generated"],
                drafted_tokens_total=self._totals["drafted"],
                accepted_tokens_total=self._totals["accepted"],
            )

    def validate_sampling(self, s: SamplingParams) -> None:
        """Raise UsageError for sampling settings llama.cpp would reject or misuse."""
        if s.temperature < 0:
            raise UsageError("temperature must be >= 0")
        if not 0.0 < s.top_p <= 1.0:
            raise UsageError("top_p must be in (0, 1]")
        if not 0.0 <= s.min_p <= 1.0:
            raise UsageError("min_p must be in [0, 1]")
        if s.repeat_penalty <= 0:
            raise UsageError("repeat_penalty must be > 0")
        if s.logprobs is not None and not 0 <= s.logprobs <= 20:
            raise UsageError("logprobs must be between 0 and 20")
        if s.grammar is not None and not s.grammar.strip():
            raise UsageError("the grammar is empty")
        for token, bias in (s.logit_bias or {}).items():
            if not isinstance(token, int) or not 0 <= token < self._n_vocab:
                raise UsageError(
                    f"logit_bias: token id {token!r} is outside the vocabulary "
                    f"(0..{self._n_vocab - 1})"
                )
            if not (isinstance(bias, (int, float)) and -100 <= bias <= 100):
                raise UsageError(f"logit_bias: the bias of token {token} must be in [-100, 100]")

    def _on_cancel(self, stream: TokenStream) -> None:
        with self._cond:
            for job in self._queue:
                if job.stream is stream:
                    self._queue.remove(job)
                    self._finish(job, "cancelled")
                    return
            for job in self._active:
                if job.stream is stream:
                    job.cancelled = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ decode thread
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._active and not self._queue:
                        self._cond.wait()
                    if self._closed:
                        break
                    starting = self._pick_slots_locked()
                for job in starting:
                    self._start(job)
                if self._active:
                    self._step()
        except BaseException as exc:  # never leave readers hanging
            message = f"decode loop failed: {type(exc).__name__}: {exc}"
            with self._cond:
                jobs = list(self._active) + list(self._queue)
                self._active.clear()
                self._queue.clear()
                self._closed = True
            for job in jobs:
                self._finish(job, "error", error=message)
            if debug_enabled():
                raise
        finally:
            with self._cond:
                jobs = list(self._active) + list(self._queue)
                self._active.clear()
                self._queue.clear()
            for job in jobs:
                self._finish(job, "cancelled", error="the engine was closed")

    def _pick_slots_locked(self) -> list[_Job]:
        """Move queued jobs into free slots, choosing the slot with the longest shared prefix."""
        starting: list[_Job] = []
        free = [s for s in self._slots if s.job is None]
        while self._queue and free:
            job = self._queue.popleft()
            best = max(
                free,
                key=lambda s: (common_prefix(s.cached, job.prompt), -s.last_used),
            )
            free.remove(best)
            best.job = job
            job.slot = best
            self._active.append(job)
            starting.append(job)
        return starting

    def _start(self, job: _Job) -> None:
        """Prepare an admitted job: trim its slot's cache to the shared prefix, make its sampler."""
        ll = self._ll
        slot = job.slot
        assert slot is not None
        job.t_start = time.perf_counter()
        # The last prompt token is always decoded (for its logits); in reproducible mode the
        # last MIN_PREFILL_ROWS, so that no prompt chunk is shorter (see `_step`).
        tail = MIN_PREFILL_ROWS if self.reproducible else 1
        limit = max(len(job.prompt) - tail, 0)
        reuse = min(common_prefix(slot.cached, job.prompt), limit)
        if self.prompt_cache.enabled:
            reuse = self._use_prompt_cache(slot, job.prompt, reuse, limit)
        if self.reproducible:
            # A sampled token's cells were computed as a lone row per sequence; the same
            # token as a prompt row meets other kernels: reuse only what was prefilled.
            reuse = min(reuse, slot.prefilled)
        if reuse < len(slot.cached):
            if not ll.llama_memory_seq_rm(self._mem, slot.seq_id, reuse, -1):
                ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                reuse = 0
            del slot.cached[reuse:]
        slot.prefilled = min(slot.prefilled, reuse)
        job.n_cached = reuse
        job.pending = job.prompt[reuse:]
        if self._drafter is not None:
            self._drafter.reset(slot.seq_id)
            job.acceptance = Acceptance(prior=self._acceptance_pool)
        try:
            job.sampler = self._make_sampler(job.request.sampling, job.prompt)
        except SovcliErrorForJob as exc:
            self._end(job, "error", error=str(exc))
            return
        self._totals["requests"] += 1
        self._totals["prompt"] += len(job.prompt)
        self._totals["cached"] += reuse

    def _use_prompt_cache(self, slot: _Slot, prompt: list[int], reuse: int, limit: int) -> int:
        """Save the slot's sequence before it is overwritten; restore a better cached one.

        Returns how many prompt tokens the slot's KV cells now hold (what to skip decoding).
        """
        ll = self._ll
        cache = self.prompt_cache
        keep = self._reusable(slot)
        if (
            len(keep) >= PROMPT_CACHE_MIN_TOKENS
            and reuse < len(slot.cached)
            and not cache.covers(keep)
        ):
            size = ll.llama_state_seq_get_size(self._ctx, slot.seq_id)
            if 0 < size <= cache.max_bytes:
                buf = (ctypes.c_uint8 * size)()
                written = ll.llama_state_seq_get_data(self._ctx, buf, size, slot.seq_id)
                if written > 0:
                    cache.put(keep, ctypes.string_at(buf, written))
        entry, shared = cache.best(prompt)
        shared = min(shared, limit)
        if entry is None or shared < reuse + PROMPT_CACHE_MIN_GAIN:
            return reuse
        ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        data = (ctypes.c_uint8 * len(entry.data)).from_buffer_copy(entry.data)
        if ll.llama_state_seq_set_data(self._ctx, data, len(entry.data), slot.seq_id) == 0:
            ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.cached.clear()
            slot.prefilled = 0
            return 0
        # The state may hold cells past the tokens kept for reuse (see `_reusable`).
        ll.llama_memory_seq_rm(self._mem, slot.seq_id, len(entry.tokens), -1)
        slot.cached = list(entry.tokens)
        slot.prefilled = len(entry.tokens)
        cache.use(entry, shared)
        return shared

    def _reusable(self, slot: _Slot) -> list[int]:
        """The tokens of `slot` a later prompt may reuse (reproducible: the prefilled ones)."""
        return slot.cached[: slot.prefilled] if self.reproducible else slot.cached

    def _make_sampler(self, s: SamplingParams, prompt: list[int]) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if s.logit_bias:
            biases = (ll.llama_logit_bias * len(s.logit_bias))()
            for entry, (token, bias) in zip(biases, sorted(s.logit_bias.items()), strict=True):
                entry.token = token
                entry.bias = -math.inf if bias <= -100 else bias  # -100 bans, as OpenAI's does
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_logit_bias(self._n_vocab, len(biases), biases)
            )
        if s.grammar:
            grammar = ll.llama_sampler_init_grammar(
                self._vocab, s.grammar.encode("utf-8"), s.grammar_root.encode("utf-8")
            )
            if not grammar:
                ll.llama_sampler_free(chain)
                raise SovcliErrorForJob("the grammar could not be parsed (GBNF syntax error)")
            ll.llama_sampler_chain_add(chain, grammar)
        if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
            penalties = ll.llama_sampler_init_penalties(
                self._n_vocab,
                s.repeat_last_n,
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            )
            for token in prompt[-s.repeat_last_n :] if s.repeat_last_n > 0 else []:
                ll.llama_sampler_accept(penalties, token)
            ll.llama_sampler_chain_add(chain, penalties)
        if s.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(s.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(s.temperature))
        seed = _DEFAULT_SEED if s.seed is None else (s.seed & 0xFFFFFFFF)
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _step(self) -> None:
        """One decode step over every active sequence; then sample and stream.

        Normally one llama_decode holds every sequence's next token and prompt chunks in the
        room left. llama.cpp's CPU kernels depend on the shape of the batch: a lone row, a few
        rows, 8 rows or more each take another path (matrix-vector vs tiled products), so the
        same prompt gets slightly different logits next to other requests and greedy output
        parts at near ties. In reproducible mode each prompt chunk gets a call of its own, at
        least `MIN_PREFILL_ROWS` long (or the whole, shorter, prompt), and the sampled
        tokens (one row per sequence) go in calls of at most `MAX_DECODE_ROWS`: every
        row then meets the same kernels whatever else is decoded.
        """
        plan = self._plan()
        if not plan:
            return
        if self.reproducible:
            sampled = [entry for entry in plan if entry[1] == 0]
            groups = self._draft_reproducible(sampled)
            groups += [[entry] for entry in plan if entry[1] > 0]
        else:
            self._draft([job for job, take in plan if take == 0], room=self.n_batch - _rows(plan))
            groups = [plan]
        for group in groups:
            if not self._decode(group):
                break
        self._wake.deliver()

    def _draft_reproducible(self, sampled: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """Split the sampled rows into calls of at most `MAX_DECODE_ROWS` rows, drafting into the
        rows those calls leave free (never an extra call: a call re-reads every weight).

        Keeping every call under 8 rows keeps drafted rows on the same kernels as sampled ones:
        speculative output is then bitwise the plain output.
        """
        if not sampled:
            return []
        size = MAX_DECODE_ROWS
        n_calls = -(-len(sampled) // size)
        base, extra = divmod(len(sampled), n_calls)
        groups: list[list[tuple[_Job, int]]] = []
        start = 0
        for i in range(n_calls):
            count = base + (1 if i < extra else 0)
            group = sampled[start : start + count]
            start += count
            self._draft([job for job, _ in group], room=size - len(group))
            groups.append(group)
        return groups

    def _draft(self, jobs: list[_Job], *, room: int) -> None:
        """Give each job the drafted tokens worth verifying this step (`room`: spare rows)."""
        for job in jobs:
            job.drafts = []
        drafter = self._drafter
        always = self.speculative == "always"
        if drafter is None or room <= 0 or (not always and self._row_cost.need_plain_call()):
            return
        wanted: list[tuple[float, _Job, int]] = []
        for job in jobs:
            if job.request.speculative is False:
                continue
            most = min(self.config.draft_max, self.n_ctx - len(job.slot.cached) - 1)
            if job.max_tokens is not None:
                most = min(most, job.max_tokens - len(job.generated) - 1)
            rate = job.acceptance.rate()
            if always:
                k = max(most, 0)
            else:
                k = best_draft_length(rate, self._row_cost, most) if most > 0 else 0
            job.idle_steps = 0 if k > 0 else job.idle_steps + 1
            if k == 0 and most > 0 and job.idle_steps >= job.explore_every:
                k, job.idle_steps = 1, 0  # try one token now and then: acceptance changes
            if k > 0:
                wanted.append((rate, job, k))
        wanted.sort(key=lambda item: -item[0])  # the likeliest to pay get the rows first
        queries: list[DraftQuery] = []
        for _, job, k in wanted:
            k = min(k, room)
            if k <= 0:
                break
            room -= k
            queries.append(DraftQuery(job.slot.seq_id, _Context(job), k))
        if not queries:
            return
        by_seq = {job.slot.seq_id: job for _, job, _ in wanted}
        for query, drafts in zip(queries, drafter.draft(queries), strict=True):
            by_seq[query.seq_id].drafts = [int(t) for t in drafts[: query.n]]

    def _plan(self) -> list[tuple[_Job, int]]:
        """What each job feeds this step: 0 = its next sampled token; k > 0 = k prompt tokens.

        Sampled tokens come first, prompt chunks share the room left in the logical batch.
        """
        plan: list[tuple[_Job, int]] = []
        room = self.n_batch
        for job in list(self._active):
            if job.cancelled:
                self._end(job, "cancelled")
                continue
            if job.next_token is None:
                continue
            if len(job.slot.cached) >= self.n_ctx:
                self._end(job, "length")
                continue
            plan.append((job, 0))
            room -= 1
        for job in self._active:
            if room <= 0:
                break
            if not job.pending or job.cancelled:
                continue
            take = min(room, len(job.pending))
            if self.reproducible:
                take = self._chunk(len(job.pending))
            plan.append((job, take))
            room -= take
        # Tokens go in ascending sequence order. With one KV stream per sequence, llama.cpp
        # splits a batch into micro-batches of consecutive sequence ids, scanning in batch
        # order (llama_batch_allocr::split_equal, sequential): out of order, one step would
        # become several graph computations, each reading every weight again.
        plan.sort(key=lambda entry: entry[0].slot.seq_id)
        return plan

    def _chunk(self, pending: int) -> int:
        """A prompt chunk of one micro-batch at most (see `reproducible.prefill_chunk`)."""
        return prefill_chunk(pending, self.n_ubatch)

    def _decode(self, plan: list[tuple[_Job, int]]) -> bool:
        """Decode `plan` in one llama_decode, then sample; False when llama_decode failed."""
        ll = self._ll
        batch = self._batch
        b_token, b_pos, b_nseq, b_seq, b_logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        n = 0
        for job, take in plan:
            slot = job.slot
            pos = len(slot.cached)
            seq_id = slot.seq_id
            # A sampled token and its drafts (every row's logits wanted), or a prompt chunk.
            rows = (job.next_token, *job.drafts) if take == 0 else job.pending[:take]
            wanted = 1 if take == 0 else 0
            for i, token in enumerate(rows):
                k = n + i
                b_token[k] = token
                b_pos[k] = pos + i
                b_nseq[k] = 1
                b_seq[k][0] = seq_id
                b_logits[k] = wanted
            if take == 0:
                job.batch_index = n
            elif take == len(job.pending):
                b_logits[n + take - 1] = 1
                job.batch_index = n + take - 1
            else:
                job.batch_index = -1
            n += len(rows)
        batch.n_tokens = n
        t0 = time.perf_counter()
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            for job, _ in plan:
                slot = job.slot
                ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.cached.clear()
                slot.prefilled = 0
                self._end(job, "error", error=f"llama_decode failed with code {rc}")
            return False
        now = time.perf_counter()
        for job, count in plan:
            slot = job.slot
            if count == 0:
                self._verify(job)
                continue
            if slot.prefilled == len(slot.cached):
                slot.prefilled += count
            slot.cached.extend(job.pending[:count])
            del job.pending[:count]
            if job.pending:
                continue
            job.t_prompt_done = now
            index = job.batch_index
            token = ll.llama_sampler_sample(job.sampler, self._ctx, index)
            self._accept(job, token, index)
        if all(take == 0 for _, take in plan):  # a decode step: what its rows cost, sampled
            self._row_cost.observe(time.perf_counter() - t0, len(plan), n - len(plan))
        return True

    def _verify(self, job: _Job) -> None:
        """Sample a decoded sequence's rows: its next token, then each drafted token's row while
        the drafts match what is sampled; remove the KV cells of the drafts not kept.

        Every row is sampled with the job's own chain (grammar, penalties, temperature), exactly
        as plain decoding samples one row per step; a draft is kept only where it equals that
        sample, and the first differing sample is the step's last token (see speculative.py).
        """
        slot = job.slot
        drafts, job.drafts = job.drafts, []
        slot.cached.append(job.next_token)
        index = job.batch_index
        accepted = 0
        job.drafted += len(drafts)  # counted before _accept may finish the job's result
        self._totals["drafted"] += len(drafts)
        sample = self._ll.llama_sampler_sample
        for i in range(len(drafts) + 1):
            token = sample(job.sampler, self._ctx, index + i)
            matched = i < len(drafts) and token == drafts[i]
            if matched:
                accepted += 1
                job.accepted += 1
                self._totals["accepted"] += 1
            self._accept(job, token, index + i)
            if job.sampler is None or not matched:  # ended, or the drafts stop here
                break
            slot.cached.append(token)
        if drafts:
            job.acceptance.observe(len(drafts), accepted)
            job.explore_every = (
                EXPLORE_EVERY if accepted else min(job.explore_every * 2, EXPLORE_MAX)
            )
            if accepted < len(drafts) or job.sampler is None:
                self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, len(slot.cached), -1)

    def _accept(self, job: _Job, token: int, index: int) -> None:
        """Handle a sampled token: EOG, text, stop strings, limits."""
        if job.max_tokens is not None and len(job.generated) >= job.max_tokens:
            self._end(job, "length")
            return
        now = time.perf_counter()
        if not job.t_first:
            job.t_first = now
        if self._ll.llama_vocab_is_eog(self._vocab, token) and not job.request.ignore_eos:
            job.next_token = None
            self._end(job, "stop")
            return
        job.generated.append(token)
        logprobs: tuple[TokenLogprob, ...] = ()
        if job.request.sampling.logprobs is not None:
            entry = self._logprob(index, token, job.request.sampling.logprobs)
            job.logprobs.append(entry)
            logprobs = (entry,)
        text = job.assembler.feed(self._piece(token))
        if job.assembler.stopped:
            job.next_token = None
            self._end(job, "stop", text=text, token=token, logprobs=logprobs)
            return
        if job.max_tokens is not None and len(job.generated) >= job.max_tokens:
            job.next_token = None
            self._end(job, "length", text=text, token=token, logprobs=logprobs)
            return
        job.next_token = token
        job.stream.push(TokenEvent(text, (token,), logprobs), self._wake)

    def _logprob(self, index: int, token: int, top_n: int) -> TokenLogprob:
        import numpy as np

        ptr = self._ll.llama_get_logits_ith(self._ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_z = peak + math.log(float(np.exp(logits - peak).sum()))
        top: list[tuple[str, float]] = []
        if top_n > 0:
            best = np.argpartition(-logits, top_n)[:top_n]
            best = best[np.argsort(-logits[best])]
            top = [(self._text_of(int(t)), float(logits[t] - log_z)) for t in best]
        return TokenLogprob(self._text_of(token), float(logits[token] - log_z), top)

    def _text_of(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _end(
        self,
        job: _Job,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
        error: str | None = None,
    ) -> None:
        """Finish an active job and free its slot (its KV cells stay cached for reuse)."""
        with self._cond:
            if job in self._active:
                self._active.remove(job)
        slot = job.slot
        if slot is not None:
            slot.job = None
            slot.last_used = time.perf_counter()
        if job.sampler is not None:
            self._ll.llama_sampler_free(job.sampler)
            job.sampler = None
        self._totals["generated"] += len(job.generated)
        self._finish(job, reason, text=text, token=token, logprobs=logprobs, error=error)

    def _finish(
        self,
        job: _Job,
        reason: FinishReason,
        *,
        text: str = "",
        token: int | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
        error: str | None = None,
    ) -> None:
        if job.stream.done:
            return
        text += job.assembler.finish()
        now = time.perf_counter()
        t_start = job.t_start or now
        t_prompt = job.t_prompt_done or now
        result = GenerationResult(
            text=job.assembler.text,
            finish_reason=reason,
            prompt_tokens=len(job.prompt),
            completion_tokens=len(job.generated),
            cached_prompt_tokens=job.n_cached,
            time_to_first_token_s=(job.t_first - job.t_submit) if job.t_first else 0.0,
            prompt_eval_s=max(t_prompt - t_start, 0.0) if job.t_prompt_done else 0.0,
            generation_s=max(now - t_prompt, 0.0) if job.t_prompt_done else 0.0,
            error=error,
            logprobs=tuple(job.logprobs),
            drafted_tokens=job.drafted,
            accepted_tokens=job.accepted,
        )
        ids = (token,) if token is not None else ()
        job.stream.finish(result, TokenEvent(text, ids, logprobs, reason))

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text (mean pooling unless the model defines one)."""
        ll = self._ll
        with self._embed_lock:
            if self._closed:
                raise EngineError("the engine is closed")
            if self._embed_ctx is None:
                cparams = ll.llama_context_default_params()
                n_ctx = min(self.info.n_ctx_train or 2048, 2048)
                cparams.n_ctx = n_ctx
                cparams.n_batch = n_ctx
                cparams.n_ubatch = n_ctx
                cparams.n_seq_max = 1
                cparams.n_threads = self.n_threads
                cparams.n_threads_batch = self.n_threads_batch
                cparams.embeddings = True
                cparams.no_perf = True
                if cparams.pooling_type == ll.LLAMA_POOLING_TYPE_UNSPECIFIED:
                    pooling = self.info.metadata.get(f"{self.info.architecture}.pooling_type")
                    if pooling is None:
                        cparams.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
                ctx = ll.llama_init_from_model(self._model, cparams)
                if not ctx:
                    raise EngineError("llama.cpp could not create an embedding context")
                self._embed_ctx = ctx
                self._embed_n_ctx = ll.llama_n_ctx(ctx)
                self._embed_batch = ll.llama_batch_init(self._embed_n_ctx, 0, 1)
            return [self._embed_one(text) for text in texts]

    def _embed_one(self, text: str) -> list[float]:
        import numpy as np

        ll = self._ll
        ctx = self._embed_ctx
        tokens = self.tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            tokens = [ll.llama_vocab_bos(self._vocab)]
        if len(tokens) > self._embed_n_ctx:
            raise ContextOverflowError(
                f"the text has {len(tokens)} tokens; embeddings take at most {self._embed_n_ctx}",
                hint="Split the text into smaller chunks.",
            )
        ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
        batch = self._embed_batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = len(tokens)
        if ll.llama_decode(ctx, batch) != 0:
            raise EngineError("llama_decode failed while computing embeddings")
        n_embd = self.info.n_embd
        if ll.llama_pooling_type(ctx) == ll.LLAMA_POOLING_TYPE_NONE:
            rows = [
                np.ctypeslib.as_array(ll.llama_get_embeddings_ith(ctx, i), shape=(n_embd,))
                for i in range(len(tokens))
            ]
            vector = np.mean(np.stack(rows), axis=0)
        else:
            ptr = ll.llama_get_embeddings_seq(ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no embedding")
            vector = np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        return [float(x) for x in vector]

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the decode thread, end pending streams ("cancelled") and free llama.cpp memory."""
        if self._closed and self._ctx is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        ll = self._ll
        with self._embed_lock:
            if self._embed_ctx is not None:
                ll.llama_batch_free(self._embed_batch)
                ll.llama_free(self._embed_ctx)
                self._embed_ctx = None
        if self._drafter is not None:
            self._drafter.close()
            self._drafter = None
        self._free_context()

    def _free_model(self) -> None:
        if self._model is not None:
            self._ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass


def _rows(plan: list[tuple[_Job, int]]) -> int:
    """Rows `plan` puts in the batch (a sampled token and its drafts, or a prompt chunk)."""
    return sum(1 + len(job.drafts) if take == 0 else take for job, take in plan)


class _Context(Sequence[int]):
    """A job's whole context without copying it: its slot's cached tokens, then next_token."""

    __slots__ = ("_cached", "_next")

    def __init__(self, job: _Job) -> None:
        self._cached = job.slot.cached
        self._next = job.next_token

    def __len__(self) -> int:
        return len(self._cached) + 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if index == len(self._cached):
            return self._next
        if not 0 <= index < len(self._cached):
            raise IndexError(index)
        return self._cached[index]


class SovcliErrorForJob(Exception):
    """A per-request failure raised while preparing a job (reported on its stream)."""
