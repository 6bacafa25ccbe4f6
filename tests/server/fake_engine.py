"""A deterministic stand-in for `sovcli.engine.core.Engine` (see `EngineProtocol`).

It keeps the engine's contract without llama.cpp, so the server's protocol, auth, limits and
error shapes can be tested in-process in milliseconds:

- one token per Unicode character (`tokenize`/`detokenize` round-trip; id = code point);
- `submit` checks the prompt like the engine (empty, ids outside the vocabulary, longer than
  the context: `ContextOverflowError`) and returns a real `TokenStream`;
- a decode thread steps up to `n_parallel` sequences together, one token each per step (every
  `step_s` seconds); later requests wait in order, so `stats()` shows slots and queue;
- chats are rendered as ChatML (the template of a GGUF without one: no native tools);
- the answer is scripted: `script(prompt)` gives a `Reply` (text, then how it ends: EOS,
  cancelled or error); `max_tokens`, stop strings (the engine's own `TextAssembler`), a full
  context and `stream.cancel()` end a sequence as in the engine;
- logprobs are made up but well formed; embeddings are L2-normalised hashes of the text.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sovcli.engine.stream import TokenStream
from sovcli.engine.textstream import TextAssembler
from sovcli.engine.types import (
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)
from sovcli.errors import ContextOverflowError, EngineError, UsageError
from sovcli.server.settings import ServedModel, ServerSettings

N_VOCAB = 0x110000  # every code point is a token
EMBED_MAX_TOKENS = 2048


@dataclass(frozen=True)
class Reply:
    """A scripted answer: the text the model "samples", then how the sequence ends.

    `end` is "stop" (an end-of-generation token after the text), "cancelled" or "error".
    """

    text: str
    end: FinishReason = "stop"


Script = Callable[[str], "Reply | str"]


def last_user_message(prompt: str) -> str:
    """The last user turn of a ChatML prompt (the whole prompt when it is not ChatML)."""
    opener = "<|im_start|>user\n"
    at = prompt.rfind(opener)
    if at == -1:
        return prompt
    return prompt[at + len(opener) :].split("<|im_end|>", 1)[0]


def echo_script(prompt: str) -> Reply:
    """The default answer: different prompts get different, reproducible answers."""
    return Reply(f"You said: {last_user_message(prompt).strip()}")


def rules(table: dict[str, Reply | str], default: Script = echo_script) -> Script:
    """A script answering with the first entry whose key occurs in the prompt."""

    def script(prompt: str) -> Reply | str:
        for needle, reply in table.items():
            if needle in prompt:
                return reply
        return default(prompt)

    return script


class _Job:
    """A request in flight: the scripted answer, what was produced so far, its stream."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt: list[int],
        reply: Reply,
        on_cancel: Callable[[_Job], None],
    ) -> None:
        self.request = request
        self.prompt = prompt
        self.reply = reply
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.assembler = TextAssembler(request.stop)
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token_at = 0.0
        self.stream = TokenStream(request.request_id, lambda _stream: on_cancel(self))

    def advance(self, n_ctx: int) -> FinishReason | None:
        """Produce the next token, or say why the sequence ends (the stream is then ended)."""
        limit = self.request.max_tokens
        done = len(self.generated)
        if self.cancelled:
            return self.end("cancelled")
        if done == len(self.reply.text):
            return self.end(self.reply.end)
        if (limit is not None and done >= limit) or len(self.prompt) + done >= n_ctx:
            return self.end("length")
        self.first_token_at = self.first_token_at or time.perf_counter()
        char = self.reply.text[done]
        self.generated.append(ord(char))
        top_n = self.request.sampling.logprobs
        logprob = () if top_n is None else (_logprob(char, top_n),)
        self.logprobs.extend(logprob)
        event = TokenEvent(self.assembler.feed(char.encode()), (ord(char),), logprob)
        if self.assembler.stopped:
            return self.end("stop", event)
        if limit is not None and done + 1 >= limit:
            return self.end("length", event)
        self.stream.push(event)
        return None

    def end(self, reason: FinishReason, last: TokenEvent | None = None) -> FinishReason:
        """Finish the stream with `reason`; `last` is the event of the final token, if any."""
        if not self.stream.done:
            text = (last.text if last else "") + self.assembler.finish()
            now = time.perf_counter()
            first = self.first_token_at
            self.stream.finish(
                GenerationResult(
                    self.assembler.text,
                    reason,
                    prompt_tokens=len(self.prompt),
                    completion_tokens=len(self.generated),
                    cached_prompt_tokens=0,
                    time_to_first_token_s=first - self.submitted if first else 0.0,
                    prompt_eval_s=0.0,
                    generation_s=now - (first or now),
                    error="scripted failure" if reason == "error" else None,
                    logprobs=tuple(self.logprobs),
                ),
                TokenEvent(
                    text, last.token_ids if last else (), last.logprobs if last else (), reason
                ),
            )
        return reason


@dataclass
class FakeEngine:
    """The engine protocol over a script (see the module docstring)."""

    script: Script = echo_script
    n_ctx: int = 1024
    n_parallel: int = 4
    n_embd: int = 64
    step_s: float = 0.001  # time per decode step
    tokenize_s_per_mb: float = 0.0  # a deliberately slow tokenizer: seconds per MB of text
    name: str = "fake"
    requests: list[GenerationRequest] = field(default_factory=list)  # everything submitted

    def __post_init__(self) -> None:
        self.info = ModelInfo(
            path=f"/models/{self.name}.gguf",
            name=self.name,
            architecture="fake",
            n_params=1_000_000,
            n_ctx_train=8192,
            n_ctx=self.n_ctx,
            n_vocab=N_VOCAB,
            n_embd=self.n_embd,
            chat_template=None,
            bos_token=None,
            eos_token="<|im_end|>",
            add_bos=False,
        )
        self._lock = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._decoding: list[_Job] = []
        self._closed = False
        self._admitted = self._prompt_total = self._generated_total = 0
        self._thread = threading.Thread(target=self._decode_loop, name="fake-decode", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # ---- text <-> tokens ---------------------------------------------------------------
    def tokenize(self, text: str, **_options: Any) -> list[int]:
        """One token per character (after `tokenize_s_per_mb` seconds per MB, if set)."""
        if self.tokenize_s_per_mb:
            time.sleep(len(text) / 1e6 * self.tokenize_s_per_mb)
        return [ord(ch) for ch in text]

    def detokenize(self, tokens: list[int]) -> str:
        """The characters of `tokens`; ids outside the vocabulary refused, as the engine does."""
        _check_ids(tokens)
        return "".join(map(chr, tokens))

    def render_chat(self, messages: list[dict[str, Any]], **_options: Any) -> str:
        """ChatML, ending with the opening of the assistant's turn."""
        turns = [f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages]
        return "".join(turns) + "<|im_start|>assistant\n"

    # ---- requests ----------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue `request`; raise at once, as the engine does, for a prompt it cannot take."""
        if request.max_tokens is not None and request.max_tokens < 0:
            raise UsageError("max_tokens must be >= 0")
        prompt = request.prompt
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        _check_ids(tokens)
        if not tokens:
            raise UsageError("the prompt is empty", hint="Give a prompt with at least one token.")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}"
            )
        reply = self.script(self.detokenize(tokens))
        job = _Job(request, tokens, Reply(reply) if isinstance(reply, str) else reply, self._cancel)
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            self.requests.append(request)
            self._waiting.append(job)
            self._lock.notify_all()
        return job.stream

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run `request` to the end (blocking)."""
        stream = self.submit(request)
        for _event in stream:
            pass
        return stream.result()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit vector per text, a function of the text alone."""
        if self._closed:
            raise EngineError("the engine is closed")
        too_long = [t for t in texts if len(t) > EMBED_MAX_TOKENS]
        if too_long:
            raise ContextOverflowError(
                f"the text has {len(too_long[0])} tokens; embeddings take at most "
                f"{EMBED_MAX_TOKENS}",
                hint="Split the text into smaller chunks.",
            )
        return [_unit_vector(text, self.n_embd) for text in texts]

    def stats(self) -> EngineStats:
        """Sequences decoding, requests waiting, slots and totals."""
        with self._lock:
            counts = (len(self._decoding), len(self._waiting), self.n_parallel, self._admitted)
            totals = (self._prompt_total, 0, self._generated_total)
        return EngineStats(*counts, *totals)

    def close(self) -> None:
        """Stop decoding; what is still waiting or decoding ends "cancelled"."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- the decode thread ---------------------------------------------------------------
    def _cancel(self, job: _Job) -> None:
        """A waiting request ends at once; a decoding one at its next step."""
        with self._lock:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                job.end("cancelled")

    def _decode_loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or self._waiting or self._decoding)
                if self._closed:
                    break
                while self._waiting and len(self._decoding) < self.n_parallel:
                    job = self._waiting.popleft()
                    self._decoding.append(job)
                    self._admitted += 1
                    self._prompt_total += len(job.prompt)
                step = list(self._decoding)
            time.sleep(self.step_s)
            for job in step:
                if job.advance(self.n_ctx) is not None:
                    with self._lock:
                        self._decoding.remove(job)
                        self._generated_total += len(job.generated)
        with self._lock:
            left = [*self._decoding, *self._waiting]
            self._decoding.clear()
            self._waiting.clear()
        for job in left:
            job.end("cancelled")


def _logprob(token: str, top_n: int) -> TokenLogprob:
    """The sampled token first, then made-up alternatives, all with logprob <= 0."""
    others = [chr(ord("a") + i) for i in range(26) if chr(ord("a") + i) != token]
    top = [(token, -0.25), *((alt, -1.0 - i) for i, alt in enumerate(others))]
    return TokenLogprob(token, -0.25, top[:top_n])


def _unit_vector(text: str, size: int) -> list[float]:
    raw = [b - 127.5 for b in hashlib.shake_256(text.encode()).digest(size)]
    norm = math.sqrt(math.fsum(x * x for x in raw))
    return [x / norm for x in raw]


class FakeEngineFactory:
    """An `EngineFactory` making `FakeEngine`s; it remembers them, can hold or fail loading."""

    def __init__(
        self,
        script: Script = echo_script,
        *,
        hold: threading.Event | None = None,
        fail: Exception | None = None,
        **engine_options: Any,
    ) -> None:
        self.script = script
        self.hold = hold  # loading waits until it is set
        self.fail = fail  # raised instead of loading
        self.engine_options = engine_options
        self.engines: dict[str, FakeEngine] = {}  # by served model ref

    def __call__(self, model: ServedModel, settings: ServerSettings) -> FakeEngine:
        if self.hold is not None:
            self.hold.wait(30)
        if self.fail is not None:
            raise self.fail
        options: dict[str, Any] = {"n_ctx": settings.ctx or 1024, **self.engine_options}
        engine = FakeEngine(
            script=self.script,
            n_parallel=settings.parallel,
            name=model.ref,
            **options,
        )
        self.engines[model.ref] = engine
        return engine


def _check_ids(tokens: list[int]) -> None:
    """A UsageError for the first id outside the vocabulary, worded as the engine words it."""
    outside = [t for t in tokens if not 0 <= t < N_VOCAB]
    if outside:
        raise UsageError(f"token id {outside[0]} is outside the vocabulary (0..{N_VOCAB - 1})")
