"""The engine's public contract. Front ends depend on these types, never on llama_cpp.

Threading model (implemented in `sovcli.engine.core.Engine`):
- One background thread owns the llama context and runs the decode loop.
- `Engine.submit(request)` is thread-safe and non-blocking; it returns a `GenerationStream`.
- A stream yields `TokenEvent`s (text deltas, always whole UTF-8 characters) and ends with a
  final event whose `finish_reason` is set; `stream.result()` blocks for the `GenerationResult`.
- `stream.cancel()` (or a client disconnect in the server) frees the sequence at the next step.
- Async callers use `async for event in stream` (events are handed over thread-safely).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MIN_CTX = 64
"""The smallest context per sequence any command accepts (`--ctx`)."""

FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


@dataclass(frozen=True)
class EngineConfig:
    """How to load a model. `None` means: pick a sensible default for this machine."""

    model_path: str
    n_ctx: int | None = None  # context per sequence; default min(train ctx, 4096)
    n_parallel: int = 1  # sequences decoded together
    n_threads: int | None = None  # default: physical cores
    n_threads_batch: int | None = None  # default: same as n_threads
    n_batch: int = 2048  # logical batch (tokens per llama_decode)
    n_ubatch: int = 512  # physical batch
    n_gpu_layers: int | None = None  # default: all on Metal builds, 0 otherwise
    flash_attn: bool | None = None  # default: auto (ignored when `reproducible`)
    use_mmap: bool = True
    use_mlock: bool = False
    embeddings: bool = False  # open a context that can return embeddings
    verbose: bool = False  # llama.cpp's own log on stderr (also SOVCLI_DEBUG=1)
    prompt_cache_mib: int = 0  # RAM for KV states of earlier sequences (0: off); see prompt_cache
    # Batch-invariant decoding: a sequence's output does not depend on what else is decoded
    # with it (see engine/reproducible.py). None: SOVCLI_REPRODUCIBLE (on by default).
    reproducible: bool | None = None
    # Speculative decoding (sovcli/engine/speculative.py): "auto" drafts from n-grams of each
    # sequence's own prompt and output where the measured cost model says it pays; "always"
    # drafts whenever the drafter has tokens; "off" never. None: SOVCLI_SPEC (auto by default).
    speculative: str | None = None
    draft_model_path: str | None = None  # a small model sharing the vocabulary drafts instead
    draft_max: int = 8  # most drafted tokens per sequence and step


@dataclass(frozen=True)
class SamplingParams:
    """Sampling, all applied in llama.cpp's C sampler chain."""

    temperature: float = 0.8  # 0 means greedy
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None: random; fixed seed is reproducible
    grammar: str | None = None  # GBNF constraining the output
    grammar_root: str = "root"
    logprobs: int | None = None  # report the top-N alternatives of each token
    # {token id: bias added to its logit}; ids in the vocabulary, biases in [-100, 100];
    # -100 bans the token (llama_sampler_init_logit_bias, first in the chain).
    logit_bias: dict[int, float] | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One OpenAI-style chat message; `content` may be None for tool-call turns."""

    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass
class GenerationRequest:
    """A completion to run: a rendered prompt (text or tokens) and how to sample it."""

    prompt: str | list[int]
    max_tokens: int | None = 256  # None: until the context is full
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    add_bos: bool = True  # only for text prompts: add BOS when the model wants one
    parse_special: bool = True  # text prompts: treat <|im_start|> etc. as special tokens
    request_id: str | None = None
    ignore_eos: bool = False  # keep generating past end-of-generation tokens (benchmarks)
    speculative: bool | None = None  # None: the engine's setting; False: never draft for it


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of a token and (optionally) its top alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TokenEvent:
    """A piece of streamed output. The last event of a stream has `finish_reason` set."""

    text: str  # whole UTF-8 characters only; may be "" (e.g. the final event)
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The whole outcome of a request, with counts and timings."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int  # prompt tokens reused from the KV cache (prefix reuse)
    time_to_first_token_s: float
    prompt_eval_s: float
    generation_s: float
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    drafted_tokens: int = 0  # speculative tokens proposed for this request
    accepted_tokens: int = 0  # of those, how many the model confirmed

    @property
    def prompt_tokens_per_s(self) -> float:
        evaluated = self.prompt_tokens - self.cached_prompt_tokens
        return evaluated / self.prompt_eval_s if self.prompt_eval_s > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.completion_tokens / self.generation_s if self.generation_s > 0 else 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What the front ends need to know about a loaded model."""

    path: str
    name: str
    architecture: str
    n_params: int
    n_ctx_train: int
    n_ctx: int  # per-sequence context actually in use
    n_vocab: int
    n_embd: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for the server's /metrics and queue limits."""

    active_sequences: int
    queued_requests: int
    n_parallel: int
    requests_total: int = 0  # requests admitted since the engine started
    prompt_tokens_total: int = 0
    cached_prompt_tokens_total: int = 0  # prompt tokens served from the KV cache
    generated_tokens_total: int = 0
    drafted_tokens_total: int = 0  # speculative decoding: proposed tokens
    accepted_tokens_total: int = 0  # speculative decoding: confirmed tokens


class GenerationStream(Protocol):
    """The handle `Engine.submit` returns. Iterate it (sync or async) for `TokenEvent`s."""

    def __iter__(self) -> Iterator[TokenEvent]: ...
    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...
    def cancel(self) -> None: ...
    def result(self, timeout: float | None = None) -> GenerationResult: ...


class EngineProtocol(Protocol):
    """What `sovcli.engine.core.Engine(config)` provides. Errors are `sovcli.errors` types.

    - Constructing it loads the model (raises `EngineError` with a hint on failure).
    - `submit` tokenizes in the caller's thread and raises `ContextOverflowError` at once when
      the prompt alone does not fit `info.n_ctx`; generation that reaches the end of the
      context stops with finish_reason "length". Requests beyond `n_parallel` wait in order.
    - Prefix reuse: a request whose prompt starts with tokens still cached in an idle
      sequence slot reuses them (`GenerationResult.cached_prompt_tokens`).
    - `embed` returns one L2-normalised vector per text (a separate embedding context is
      created on first use).
    """

    info: ModelInfo

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...
    def detokenize(self, tokens: list[int]) -> str: ...
    def render_chat(
        self,
        messages: list[ChatMessage] | list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str: ...
    def submit(self, request: GenerationRequest) -> GenerationStream: ...
    def generate(self, request: GenerationRequest) -> GenerationResult: ...
    def embed(self, texts: list[str]) -> list[list[float]]: ...
    def stats(self) -> EngineStats: ...
    def close(self) -> None: ...
