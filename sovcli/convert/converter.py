"""Convert a Hugging Face safetensors checkpoint folder to a GGUF file, one tensor at a time.

The GGUF header (metadata and tensor directory) is computed from the safetensors headers
alone; then each tensor is read, transformed, converted and written, and dropped before the
next one, so peak memory is a few times the largest tensor, not the model size.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.errors import ConversionError, DiskFullError, UsageError
from sovcli.fsutil import atomic_path
from sovcli.progress import NULL_PROGRESS, Progress

from . import CONVERTER_SCHEMA_VERSION
from .architectures import PlannedTensor, plan_tensors, spec_for, write_hparams
from .checkpoint import Checkpoint, open_checkpoint, read_tensor, to_float32
from .metadata import write_general, write_sampling_defaults
from .tokenizer import load_vocab

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class ConvertResult:
    """What a conversion produced."""

    output: Path
    architecture: str
    gguf_architecture: str
    outtype: str
    n_tensors: int
    n_parameters: int
    output_bytes: int
    tokenizer: dict[str, Any]
    general: dict[str, Any]
    seconds: float
    converter_schema: int = CONVERTER_SCHEMA_VERSION
    sampling: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (what `sovcli convert --json` prints)."""
        return {
            "output": str(self.output),
            "architecture": self.architecture,
            "gguf_architecture": self.gguf_architecture,
            "outtype": self.outtype,
            "tensors": self.n_tensors,
            "parameters": self.n_parameters,
            "bytes": self.output_bytes,
            "tokenizer": self.tokenizer,
            "general": self.general,
            "seconds": round(self.seconds, 3),
        }


def _tensor_qtype(item: PlannedTensor, outtype: str):
    from gguf import GGMLQuantizationType as Q

    if item.force_f32 or len(item.shape) <= 1 or item.name.endswith("_norm.weight"):
        return Q.F32
    if outtype == "f32":
        return Q.F32
    if outtype == "f16":
        return Q.F16
    if outtype == "bf16":
        return Q.BF16
    if item.shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _encode(item: PlannedTensor, ref, raw, qtype):
    """Turn one part's raw data into the bytes of the target type (as a numpy array)."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    src = ref.dtype if ref is not None else "F32"
    if item.transform is not None:
        if item.needs_float:
            raw, src = item.transform(to_float32(raw, src)), "F32"
        else:
            raw = item.transform(raw)
    if qtype == Q.F16 and src == "F16":
        return np.ascontiguousarray(raw)
    if qtype == Q.BF16 and src == "BF16":
        return np.ascontiguousarray(raw)
    data = to_float32(raw, src)
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(data), qtype)


# Large tensors are converted in blocks of rows of about this many elements, so memory stays
# near one block (not one tensor) for embeddings and FFN matrices.
BLOCK_ELEMENTS = 8 * 1024 * 1024


def _row_blocks(item: PlannedTensor, ref) -> list[tuple[int, int | None]]:
    """(first row, row count) blocks for one part; one block when rows cannot be split."""
    if len(ref.shape) < 2 or not item.elementwise or ref.n_elements <= BLOCK_ELEMENTS:
        return [(0, None)]
    rows = ref.shape[0]
    per_row = ref.n_elements // rows
    step = max(1, BLOCK_ELEMENTS // per_row)
    return [(start, min(step, rows - start)) for start in range(0, rows, step)]


def _check_free_space(output: Path, needed: int) -> None:
    """Fail before writing when the output's volume cannot hold the whole file."""
    import shutil

    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed + 16 * 1024 * 1024:
        raise DiskFullError(
            f"{output.name} needs {needed / 1e9:.2f} GB but {parent} has {free / 1e9:.2f} GB free",
        )


def _check_vocab_rows(planned: list[PlannedTensor], n_tokens: int) -> None:
    embd = next(p for p in planned if p.name == "token_embd.weight")
    if embd.shape[0] != n_tokens:
        raise ConversionError(
            f"the tokenizer has {n_tokens} tokens but the embedding has {embd.shape[0]} rows",
            hint="Check that tokenizer files and weights come from the same checkpoint.",
        )


def convert_checkpoint(
    folder: Path,
    output: Path,
    *,
    outtype: str = "f16",
    pre_tokenizer: str | None = None,
    source_repo: str | None = None,
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert the checkpoint in `folder` to the GGUF file `output` (written atomically).

    The tensor data written is one `progress` task, in bytes, labelled `convert <outtype>`.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise UsageError(
            f"unknown --outtype {outtype!r}",
            hint="Use one of: "
            + ", ".join(OUTTYPES)
            + " (quantize further with `sovcli quantize`).",
        )
    started = time.monotonic()
    logging.getLogger("gguf").setLevel(logging.ERROR)
    ckpt = checkpoint or open_checkpoint(Path(folder))
    spec = spec_for(ckpt)
    config = ckpt.config
    planned = plan_tensors(ckpt, spec)
    embd_rows = next(p.shape[0] for p in planned if p.name == "token_embd.weight")
    vocab = load_vocab(ckpt.path, embd_rows, pre_override=pre_tokenizer)
    _check_vocab_rows(planned, len(vocab.tokens))
    if spec.gguf_arch in ("gemma2", "gemma3") and vocab.model == "llama":
        vocab.add_space_prefix = False  # Gemma's SentencePiece adds no dummy prefix

    qtypes = [_tensor_qtype(p, outtype) for p in planned]
    sizes = [_nbytes(p.shape, q) for p, q in zip(planned, qtypes, strict=False)]
    total_bytes = sum(sizes)
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]

    output = Path(output)
    _check_free_space(output, total_bytes)
    # GGUFWriter opens the file itself: atomic_path fsyncs what it wrote before the rename.
    with atomic_path(output) as tmp_path:
        writer = gguf.GGUFWriter(tmp_path, spec.gguf_arch)
        try:
            general = write_general(writer, ckpt.path, config, source_repo=source_repo)
            write_hparams(writer, spec, config)
            writer.add_file_type(int(ftype))
            if outtype == "q8_0":
                writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to_writer(writer, ckpt.path)
            sampling = write_sampling_defaults(writer, ckpt.json_file("generation_config.json"))
            writer.add_string("sovcli.converter.schema", str(CONVERTER_SCHEMA_VERSION))
            import numpy as np

            for item, qtype, size in zip(planned, qtypes, sizes, strict=False):
                writer.add_tensor_info(
                    item.name, item.shape, np.dtype(np.float32), size, raw_dtype=qtype
                )
            writer.write_header_to_file(path=tmp_path)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            task = (progress or NULL_PROGRESS).task(f"convert {outtype}", total_bytes, unit="B")
            for item, qtype, size in zip(planned, qtypes, sizes, strict=False):
                writer.write_padding(fout, fout.tell())
                written = 0
                if item.generated is not None:
                    chunk = _encode(item, None, item.generated, qtype)
                    chunk.tofile(fout)
                    written += chunk.nbytes
                    del chunk
                for ref in item.parts:
                    for start, count in _row_blocks(item, ref):
                        raw = read_tensor(ref, start, count)
                        chunk = _encode(item, ref, raw, qtype)
                        del raw
                        chunk.tofile(fout)
                        written += chunk.nbytes
                        del chunk
                if written != size:
                    raise ConversionError(
                        f"internal size mismatch for {item.name}: {written} != {size} bytes"
                    )
                writer.write_padding(fout, size)
                task.advance(size)
            writer.flush()
            task.close()
        finally:
            writer.close()
    return ConvertResult(
        output=output,
        architecture=ckpt.architecture,
        gguf_architecture=spec.gguf_arch,
        outtype=outtype,
        n_tensors=len(planned),
        n_parameters=sum(p.n_elements for p in planned),
        output_bytes=output.stat().st_size,
        tokenizer={
            "model": vocab.model,
            "pre": vocab.pre,
            "tokens": len(vocab.tokens),
            "source": vocab.source,
        },
        general=general,
        seconds=time.monotonic() - started,
        sampling=sampling,
    )
