"""Where completions run: the local engine (continuous batching) or remote endpoints.

A backend takes `PromptJob`s (a message template and the text placed in it) and returns
`Completion`s. `LocalBackend` tokenizes the document text with special-token parsing OFF,
so a document that contains `<|im_start|>` cannot inject chat turns; it submits every chunk of
a document at once and lets the engine decode them alongside the other workers' requests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sovcli.errors import ContextOverflowError, SovcliError

# Stand-in for the document while the chat template is rendered; NUL never survives extraction.
DOC_SENTINEL = "\x00sovcli-document\x00"
CONTEXT_MARGIN_TOKENS = 8


@dataclass(frozen=True)
class PromptJob:
    """One completion to run: `render(text)` is the user message with `text` placed in it."""

    render: Callable[[str], str]
    text: str


@dataclass(frozen=True)
class GenerationSettings:
    """How every completion of the run is sampled; part of the resume key."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0
    schema: dict[str, Any] | None = None
    grammar: str | None = None  # GBNF for local runs with a schema


@dataclass(frozen=True)
class Completion:
    """The outcome of one completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


def trim_cut(completion: Completion) -> Completion:
    """An answer cut at --max-tokens may end in the middle of a UTF-8 character, which the
    decoder turns into U+FFFD: that half character is dropped, never shown as garbage."""
    if completion.finish_reason == "length" and completion.text.endswith("\ufffd"):
        return replace(completion, text=completion.text.rstrip("\ufffd"))
    return completion


class BackendFailure(Exception):
    """A completion that failed; `kind` is 'input' (this document), 'engine' or 'network'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Backend(Protocol):
    """What the runner needs from the local engine or a remote endpoint."""

    label: str

    def count_tokens(self, text: str) -> int: ...
    def text_budget(self, render: Callable[[str], str], max_tokens: int) -> int: ...
    def complete_many(
        self, jobs: list[PromptJob], settings: GenerationSettings
    ) -> list[Completion]: ...


class LocalBackend:
    """Completions on a loaded `sovcli.engine.core.Engine` shared by all worker threads."""

    label = "local"

    def __init__(self, engine: Any, system: str | None = None) -> None:
        self.engine = engine
        self.n_ctx: int = int(engine.info.n_ctx)
        self._bos_text = engine.info.bos_token or None
        # a created model's system prompt (`sovcli create`), sent before each document
        self._head = [{"role": "system", "content": system}] if system else []
        self._streams: set[Any] = set()  # in flight, for cancel_all
        self._streams_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Exact token count of document text (no special tokens)."""
        return len(self.engine.tokenize(text, add_special=False, parse_special=False))

    def prompt_tokens(self, job: PromptJob) -> list[int]:
        """The chat-formatted prompt as tokens, the document tokenized as plain text."""
        message = job.render(DOC_SENTINEL)
        chat = self.engine.render_chat([*self._head, {"role": "user", "content": message}])
        pieces = chat.split(DOC_SENTINEL)
        if len(pieces) == 1:  # the template rewrote the content; fall back to plain text
            user = {"role": "user", "content": job.render(job.text)}
            chat = self.engine.render_chat([*self._head, user])
            return self.engine.tokenize(chat, add_special=not self._has_bos(chat))
        doc_tokens = self.engine.tokenize(job.text, add_special=False, parse_special=False)
        tokens: list[int] = []
        for i, piece in enumerate(pieces):
            if i > 0:
                tokens.extend(doc_tokens)
            add_special = i == 0 and not self._has_bos(piece)
            if piece or add_special:
                tokens.extend(self.engine.tokenize(piece, add_special=add_special))
        return tokens

    def _has_bos(self, text: str) -> bool:
        return bool(self._bos_text) and text.startswith(self._bos_text)

    def text_budget(self, render: Callable[[str], str], max_tokens: int) -> int:
        """Tokens of document text that fit one prompt next to the template and the answer."""
        overhead = len(self.prompt_tokens(PromptJob(render=render, text="")))
        return self.n_ctx - max_tokens - overhead - CONTEXT_MARGIN_TOKENS

    def complete_many(
        self, jobs: list[PromptJob], settings: GenerationSettings
    ) -> list[Completion]:
        """Submit every job at once (the engine batches them), then wait for all."""
        from sovcli.engine.types import GenerationRequest, SamplingParams

        sampling = SamplingParams(
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            seed=settings.seed,
            grammar=settings.grammar,
        )
        streams = []
        started = time.monotonic()
        try:
            for job in jobs:
                request = GenerationRequest(
                    prompt=self.prompt_tokens(job),
                    max_tokens=settings.max_tokens,
                    sampling=sampling,
                )
                streams.append(self.engine.submit(request))
                with self._streams_lock:
                    self._streams.add(streams[-1])
            results = [stream.result() for stream in streams]
        except ContextOverflowError as exc:
            _cancel_all(streams)
            raise BackendFailure("input", f"does not fit the context: {exc.message}") from exc
        except SovcliError as exc:
            _cancel_all(streams)
            raise BackendFailure("engine", exc.message) from exc
        except BaseException:
            _cancel_all(streams)
            raise
        finally:
            with self._streams_lock:
                self._streams.difference_update(streams)
        elapsed = time.monotonic() - started
        completions = []
        for result in results:
            if result.finish_reason in ("error", "cancelled"):
                raise BackendFailure("engine", result.error or f"generation {result.finish_reason}")
            completions.append(
                trim_cut(
                    Completion(
                        text=result.text,
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        finish_reason=result.finish_reason,
                        seconds=elapsed,
                    )
                )
            )
        return completions

    def cancel_all(self) -> None:
        """Cancel every generation in flight (Ctrl-C): their callers get "cancelled"."""
        with self._streams_lock:
            streams = list(self._streams)
        _cancel_all(streams)


def _cancel_all(streams: list[Any]) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.cancel()
