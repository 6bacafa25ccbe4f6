"""A small llama.cpp harness for the conversion tests (llama-cpp-python's low-level API).

It loads a GGUF, tokenizes, returns last-position logits and greedy continuations, so tests
can compare a converted model with the original without the engine.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def quiet_llama_log() -> None:
    """llama.cpp through sovcli's one binding, whose log router drops the chatter."""
    from sovcli.llamacpp import llama

    llama()


class LlamaModel:
    """One loaded model + context (n_ctx small, CPU only)."""

    def __init__(
        self, path: Path, n_ctx: int = 512, n_threads: int = 1, f32_cache: bool = False
    ) -> None:
        import llama_cpp

        quiet_llama_log()
        llama_cpp.llama_backend_init()
        self._lib = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        if f32_cache:  # exact comparisons: keep K/V in f32 instead of the default f16
            cparams.type_k = llama_cpp.GGML_TYPE_F32
            cparams.type_v = llama_cpp.GGML_TYPE_F32
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        """Free the context and the model."""
        if self.ctx:
            self._lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self._lib.llama_model_free(self.model)
            self.model = None

    def tokenize(
        self, text: str, *, add_special: bool = False, parse_special: bool = False
    ) -> list[int]:
        """Token ids of `text` as llama.cpp splits it."""
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (self._lib.llama_token * n_max)()
        n = self._lib.llama_tokenize(
            self.vocab, data, len(data), buf, n_max, add_special, parse_special
        )
        if n < 0:
            raise RuntimeError("tokenize buffer too small")
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        """Text of `tokens`."""
        arr = (self._lib.llama_token * len(tokens))(*tokens)
        size = 16 * len(tokens) + 16
        out = ctypes.create_string_buffer(size)
        n = self._lib.llama_detokenize(self.vocab, arr, len(tokens), out, size, False, False)
        return out.raw[:n].decode("utf-8", errors="replace")

    def _reset(self) -> None:
        mem = self._lib.llama_get_memory(self.ctx)
        self._lib.llama_memory_clear(mem, True)

    def _decode(self, tokens: list[int]) -> np.ndarray:
        arr = (self._lib.llama_token * len(tokens))(*tokens)
        batch = self._lib.llama_batch_get_one(arr, len(tokens))
        if self._lib.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        ptr = self._lib.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at the last position after evaluating `tokens` from an empty cache."""
        self._reset()
        return self._decode(tokens)

    def greedy(self, tokens: list[int], n: int, *, stop_at_eog: bool = True) -> list[int]:
        """Up to `n` greedily generated token ids after `tokens` (stops after an end token)."""
        self._reset()
        logits = self._decode(tokens)
        out: list[int] = []
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            if stop_at_eog and self._lib.llama_vocab_is_eog(self.vocab, tok):
                break
            logits = self._decode([tok])
        return out

    def all_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of `tokens` (one batch, from an empty cache)."""
        lib = self._lib
        self._reset()
        batch = lib.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            if lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            rows = [
                np.ctypeslib.as_array(
                    lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)
                ).copy()
                for i in range(len(tokens))
            ]
        finally:
            lib.llama_batch_free(batch)
        return np.stack(rows)

    def teacher_forced_argmax(self, prompt: list[int], continuation: list[int]) -> list[int]:
        """The model's top-1 prediction at each step of `continuation`, fed the given tokens."""
        logits = self.all_logits(prompt + continuation[:-1])
        return [int(x) for x in np.argmax(logits[len(prompt) - 1 :], axis=1)]
