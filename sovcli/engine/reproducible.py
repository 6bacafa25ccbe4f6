"""Batch-invariant decoding: the rules that keep every row of a sequence on one kernel path.

llama.cpp's CPU kernels depend on the shape of the batch they compute (llama.cpp 0.3.36's
ggml, read and measured: scripts/bench_reproducible.py):

- flash attention is tiled from 64 query rows of a sequence and per-row below, and split
  over the threads for one lone sequence with >= 512 KV cells;
- K-quant weights (Q4_K, Q6_K, IQ...) are multiplied by a tiled kernel from 8 rows and by a
  dot product per row below; repacked weights (Q4_K and others on AVX2/AVX-512/NEON) by a
  GEMM kernel in groups of 4 rows and a GEMV kernel for the rest;
- a batch mixing one sequence's prompt with other sequences' sampled tokens is split into
  micro-batches of equal rows per sequence (`llama_batch_allocr::split_equal`), so a prompt
  row can land alone and take the matrix-vector attention path.

The same prompt then gets slightly different logits next to other requests, and greedy
output parts at near ties (measured: 5 of 8 answers differed between `--parallel 1` and 8).
A reproducible engine turns flash attention and weight repacking off, decodes each prompt
chunk in a llama_decode of its own of at least `MIN_PREFILL_ROWS` rows (or the whole,
shorter, prompt), decodes sampled tokens in groups of at most `MAX_DECODE_ROWS` sequences,
and reuses cached KV cells for a later prompt only where they were computed as prompt rows.
Every row then meets the same kernels whatever else is decoded: the logits are bitwise equal.
"""

from __future__ import annotations

from sovcli import settings

MIN_PREFILL_ROWS = 8
MAX_DECODE_ROWS = 7


def default_reproducible() -> bool:
    """`SOVCLI_REPRODUCIBLE` (on unless set to 0): what an engine does when not told."""
    return settings.raw("SOVCLI_REPRODUCIBLE") is None or settings.flag("SOVCLI_REPRODUCIBLE")


def prefill_chunk(pending: int, ubatch: int) -> int:
    """The next prompt chunk of `pending` rows: one micro-batch at most, never leaving a last
    chunk shorter than `MIN_PREFILL_ROWS` (a short chunk takes other kernels)."""
    take = min(pending, ubatch)
    if 0 < pending - take < MIN_PREFILL_ROWS:
        take = max(pending - MIN_PREFILL_ROWS, 1)
    return take
