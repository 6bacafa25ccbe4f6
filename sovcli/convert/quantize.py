"""Quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python).

Progress comes from llama.cpp's per-tensor log lines (`[  12/ 272] blk.0.attn_q.weight ...`),
read through `llama_log_set`; errors it logs (`failed to quantize: ...`) become
ConversionError. Output is written to a temp file beside the target and renamed.
"""

from __future__ import annotations

import ctypes
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli import llamacpp, system
from sovcli.errors import ConversionError, ModelNotFoundError, UsageError
from sovcli.fsutil import atomic_path
from sovcli.progress import NULL_PROGRESS, Progress, ProgressTask
from sovcli.store.hashing import sha256_file

# Types whose quality collapses without an importance matrix: every IQ type, and Q2_K_S
# (llama.cpp's quantize tool refuses the very low-bit ones without one too).
IMATRIX_REQUIRED_PREFIXES = ("IQ",)
IMATRIX_REQUIRED = ("Q2_K_S",)

_PROGRESS_RE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\]\s+(\S+)")
_ERROR_RE = re.compile(r"failed to quantize:\s*(.+)")

# (tensor index, tensor count, tensor name)

_log_lock = threading.Lock()


def quant_types() -> dict[str, int]:
    """Every llama.cpp file type this build can write, by name (e.g. "Q4_K_M" -> 15)."""
    llama_cpp = llamacpp.llama()

    types: dict[str, int] = {}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr.removeprefix("LLAMA_FTYPE_MOSTLY_")] = int(getattr(llama_cpp, attr))
    if hasattr(llama_cpp, "LLAMA_FTYPE_ALL_F32"):
        types["F32"] = int(llama_cpp.LLAMA_FTYPE_ALL_F32)
    return dict(sorted(types.items(), key=lambda kv: kv[1]))


def needs_imatrix(type_name: str) -> bool:
    """True for the types sovcli only produces with an importance matrix."""
    return type_name.startswith(IMATRIX_REQUIRED_PREFIXES) or type_name in IMATRIX_REQUIRED


def normalize_type(name: str) -> str:
    """Canonical spelling of a quant type name ("q4_k_m" -> "Q4_K_M"), or UsageError."""
    wanted = name.strip().upper().replace("-", "_")
    types = quant_types()
    if wanted not in types:
        raise UsageError(
            f"unknown quantization type {name!r}",
            hint="Types: " + ", ".join(types) + ".",
        )
    return wanted


def default_output(input_path: Path, type_name: str) -> Path:
    """`model-f16.gguf` -> `model-Q4_K_M.gguf` (beside the input)."""
    stem = input_path.stem
    stem = re.sub(r"[-.](f16|bf16|f32|F16|BF16|F32)$", "", stem)
    return input_path.with_name(f"{stem}-{type_name}.gguf")


def llama_cpp_label() -> str:
    """`llama-cpp-python 0.3.36`: the quantizer's version as conversion records name it."""
    return f"llama-cpp-python {llamacpp.version()}"


# ----------------------------------------------------------------------------- imatrix


def load_imatrix(path: Path) -> dict[str, list[float] | Any]:
    """Read an importance matrix (llama.cpp's GGUF format or the legacy .dat format).

    Returns tensor name -> float32 array of per-column importances, normalised the way
    llama.cpp's quantize tool does (sums divided by counts).
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"imatrix file {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        import gguf

        reader = gguf.GGUFReader(path)
        sums = {
            t.name[: -len(".in_sum2")]: t for t in reader.tensors if t.name.endswith(".in_sum2")
        }
        counts = {
            t.name[: -len(".counts")]: t for t in reader.tensors if t.name.endswith(".counts")
        }
        result: dict[str, Any] = {}
        for name, tensor in sums.items():
            data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            cnt = (
                np.asarray(counts[name].data, dtype=np.float32).reshape(-1)
                if name in counts
                else None
            )
            if cnt is None or cnt.size == 0:
                result[name] = data.copy()
                continue
            per = data.reshape(cnt.size, -1)
            out = np.where(cnt[:, None] > 0, per / np.maximum(cnt[:, None], 1e-30), 1.0)
            result[name] = out.astype(np.float32).reshape(-1)
        if not result:
            raise ConversionError(f"{path.name} holds no importance data (*.in_sum2 tensors)")
        return result
    raw = path.read_bytes()
    try:
        pos = 0
        (n_entries,) = struct.unpack_from("<i", raw, pos)
        pos += 4
        result = {}
        for _ in range(n_entries):
            (name_len,) = struct.unpack_from("<i", raw, pos)
            pos += 4
            name = raw[pos : pos + name_len].decode("utf-8")
            pos += name_len
            ncall, nval = struct.unpack_from("<ii", raw, pos)
            pos += 8
            values = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            result[name] = values / ncall if ncall > 0 else values
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(
            f"{path.name} is not an importance matrix",
            hint="Make one with llama.cpp's llama-imatrix (GGUF or legacy .dat output).",
        ) from exc
    if not result:
        raise ConversionError(f"{path.name} holds no importance data")
    return result


# ----------------------------------------------------------------------------- log capture


class _LogCapture:
    """Collects llama.cpp's log lines during one quantization; reports progress and errors."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label
        self.task: ProgressTask | None = None  # started at the first tensor
        self.buffer = ""
        self.errors: list[str] = []
        self.lines: list[str] = []

    def feed(self, text: str) -> None:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > 200:
            del self.lines[:100]
        if match := _ERROR_RE.search(line):
            self.errors.append(match[1].strip())
            return
        if match := _PROGRESS_RE.search(line):
            done, total = int(match[1]), int(match[2])
            if self.task is None:
                self.task = self.progress.task(self.label, total, unit="tensors")
            self.task.update(completed=done)

    def close(self) -> None:
        """The quantization ended: close the progress task."""
        if self.task is not None:
            self.task.close()


# ----------------------------------------------------------------------------- quantize


@dataclass
class QuantizeResult:
    """What a quantization produced."""

    input: Path
    output: Path
    type: str
    ftype: int
    input_bytes: int
    output_bytes: int
    seconds: float
    threads: int
    imatrix: str | None  # sha256 of the imatrix file
    llama_cpp: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "input": str(self.input),
            "output": str(self.output),
            "type": self.type,
            "ftype": self.ftype,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "seconds": round(self.seconds, 3),
            "threads": self.threads,
            "imatrix_sha256": self.imatrix,
            "llama_cpp": self.llama_cpp,
        }


def _quantize_in_thread(llama_cpp: Any, source: Path, target: Path, params: Any) -> int:
    """Run llama_model_quantize in a daemon thread and wait for it.

    A signal handler only runs in the main thread between Python steps, so a direct ctypes
    call would hold Ctrl-C and SIGTERM until the whole quantization ended. Waiting on a
    thread is interruptible: the KeyboardInterrupt unwinds at once (the caller's atomic_path
    removes the temp folder) and the abandoned worker ends with the process.
    """
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(
                llama_cpp.llama_model_quantize(
                    str(source).encode(), str(target).encode(), ctypes.byref(params)
                )
            )
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name="sovcli-quantize", daemon=True)
    worker.start()
    while worker.is_alive():
        # Short waits: a signal delivered to the worker thread does not wake a blocked join,
        # so the main thread must come back to run its handler.
        worker.join(timeout=0.1)
    if not outcome:
        raise ConversionError("the quantizer thread ended without a result")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return int(outcome[0])


def check_tensors(path: Path) -> None:
    """Refuse a GGUF that lacks tensors its architecture needs, before llama.cpp reads it.

    llama.cpp's quantizer copies whatever tensors a file holds, so an incomplete conversion
    would come out "quantized" and fail only when loaded.
    """
    from sovcli.errors import IntegrityError
    from sovcli.store.ggufmeta import tensor_layout

    from .architectures import check_tensor_set

    again = "Convert the checkpoint again: sovcli convert HF_DIR -o model-f16.gguf"
    try:
        arch, blocks, names = tensor_layout(path)
    except IntegrityError as exc:
        raise ConversionError(f"{path.name} is not a readable GGUF ({exc})", hint=again) from None
    if arch is None or blocks is None:
        raise ConversionError(
            f"{path.name} does not name its architecture and block count", hint=again
        )
    check_tensor_set(set(names), arch, blocks, path.name)


def _check_input(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} does not exist",
            hint="Pass a GGUF file, e.g. one written by `sovcli convert`.",
        )
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConversionError(
                f"{path} is not a GGUF file",
                hint="Convert a checkpoint first: sovcli convert HF_DIR -o model-f16.gguf",
            )


def quantize_gguf(
    input_path: Path,
    type_name: str,
    output_path: Path | None = None,
    *,
    imatrix: Path | None = None,
    threads: int | None = None,
    allow_requantize: bool = False,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize `input_path` to `type_name` with llama.cpp; write `output_path` atomically.

    Tensors done are one `progress` task, labelled `quantize <TYPE>`; `threads` defaults to
    the physical cores.
    """
    import numpy as np

    llama_cpp = llamacpp.llama()

    input_path = Path(input_path)
    _check_input(input_path)
    type_name = normalize_type(type_name)
    ftype = quant_types()[type_name]
    if needs_imatrix(type_name) and imatrix is None:
        raise UsageError(
            f"{type_name} needs an importance matrix",
            hint="Pass --imatrix FILE (made with llama.cpp's llama-imatrix), or pick a K type "
            "such as Q4_K_M.",
        )
    output_path = Path(output_path) if output_path else default_output(input_path, type_name)
    if output_path.resolve() == input_path.resolve():
        raise UsageError("the output would overwrite the input", hint="Pass a different -o path.")
    check_tensors(input_path)
    n_threads = threads if threads and threads > 0 else system.physical_cores()

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    params.allow_requantize = bool(allow_requantize)

    imatrix_hash = None
    keep_alive: list[Any] = []
    if imatrix is not None:
        data = load_imatrix(Path(imatrix))
        imatrix_hash = sha256_file(Path(imatrix))
        entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, values) in enumerate(data.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            name_b = name.encode("utf-8")
            keep_alive.extend((arr, name_b))
            entries[i].name = name_b
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(data)].name = None
        keep_alive.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    capture = _LogCapture(progress or NULL_PROGRESS, f"quantize {type_name}")
    started = time.monotonic()
    # llama.cpp writes the file itself: atomic_path fsyncs it by path before the rename, and
    # on Ctrl-C/SIGTERM removes its private folder (the abandoned writer cannot re-create it).
    with atomic_path(output_path) as tmp_path:
        with _log_lock, llamacpp.capture_log(capture.feed):
            rc = _quantize_in_thread(llama_cpp, input_path, tmp_path, params)
        if rc != 0:
            reason = capture.errors[-1] if capture.errors else f"llama_model_quantize returned {rc}"
            hint = None
            if "requires an imatrix" in reason or "importance matrix" in reason:
                hint = "Pass --imatrix FILE made for this model."
            elif "requantizing" in reason:
                hint = (
                    "Quantize from the f16/bf16 GGUF for best quality, or pass --allow-requantize."
                )
            raise ConversionError(
                f"llama.cpp could not quantize {input_path.name}: {reason}", hint=hint
            )
    capture.close()
    del keep_alive
    return QuantizeResult(
        input=input_path,
        output=output_path,
        type=type_name,
        ftype=ftype,
        input_bytes=input_path.stat().st_size,
        output_bytes=output_path.stat().st_size,
        seconds=time.monotonic() - started,
        threads=n_threads,
        imatrix=imatrix_hash,
        llama_cpp=llama_cpp_label(),
    )
