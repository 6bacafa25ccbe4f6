"""Text extraction in worker processes, with a time and a memory limit per document.

A hostile document (a PDF content stream that takes minutes, an e-mail header that is
quadratic to parse, a zip bomb) must not stall or exhaust a batch run. `extract_isolated`
hands the path to a worker process (`python -I` running `serve()`), which reads and
extracts it under an address-space limit (RLIMIT_AS) and sends the text back over a pipe.
The parent waits at most `timeout` seconds (for a scan, per OCR'd page: the worker reports
each page done, which starts the limit again); a worker that takes longer is killed and
replaced, a worker that runs out of memory (MemoryError, or killed by the kernel) is
replaced; the document gets "timeout: ..." or "too large: ..." as its reason and the run
goes on. Workers are reused across documents (one process per concurrent extraction, not
one per document) and waiting for one releases the GIL, so generation goes on meanwhile.

OCR (Tesseract, `sovcli.batch.ocr`) runs here too, as a child of the worker: under the same
memory limit and timeout, beside generation, never in the engine's thread.

Protocol: one JSON line per request on the worker's stdin; the answer is one JSON line
(`{"ok": true, "size": N, "ocr_pages": [...], ...}` then N bytes of UTF-8 text, or
`{"ok": false, "error": ..., "status": "error" | "needs_ocr"}`)
on a private copy of its stdout. The worker exits on end of input, so it never outlives
the parent by more than the document it is working on (and an alarm bounds that too).
POSIX only (select on pipes, resource limits); elsewhere extraction runs in-process.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli.batch.extract import (
    MAX_FILE_BYTES,
    Extracted,
    ExtractionError,
    NeedsOCR,
    OcrOptions,
    extract_document,
    short_reason,
)

DEFAULT_TIMEOUT = 120.0  # seconds per document
DEFAULT_MEMORY = 1 << 30  # bytes of address space per worker
MIN_MEMORY = 128 << 20
MAX_MEMORY = 1 << 50  # 1 PiB: in effect no limit, but a number setrlimit takes
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_TEXT_BYTES = 4 * MAX_FILE_BYTES  # an answer claiming more is refused
MAX_REQUEST_BYTES = 1 << 16
ALARM_GRACE = 5  # the worker kills itself this long after its time limit, parent or not
START_TIMEOUT = 60.0  # a new worker must say it is ready within this
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from sovcli.batch.isolate import serve; serve()"
)
SUPPORTED = os.name == "posix"


@dataclass(frozen=True)
class ExtractOptions:
    """How documents are extracted: limits per document, and the text encoding to assume."""

    timeout: float = DEFAULT_TIMEOUT  # seconds; the document's record says "timeout"
    memory: int = DEFAULT_MEMORY  # bytes of address space; beyond it, "too large"
    encoding: str | None = None  # for .txt/.md/.html/.csv (None: detect)
    isolate: bool = True  # False: in this process, without limits (measurements, tests)
    ocr: str = "auto"  # auto | always | never (see sovcli.batch.paged)
    ocr_lang: str | None = None  # Tesseract languages "eng+fra"; None: eng/fra/deu installed

    @property
    def ocr_options(self) -> OcrOptions:
        """The OCR part of these options."""
        return OcrOptions(mode=self.ocr, lang=self.ocr_lang)


def extract_options(
    timeout: float = DEFAULT_TIMEOUT,
    memory_mib: int = DEFAULT_MEMORY >> 20,
    encoding: str | None = None,
    ocr: str = "auto",
    ocr_lang: str | None = None,
) -> ExtractOptions:
    """ExtractOptions from command-line values (--doc-timeout, --doc-memory in MiB, --encoding,
    --ocr, --ocr-lang).

    UsageError for a limit out of range, an encoding Python does not know, an OCR mode that
    does not exist or a language pack that Tesseract does not have.
    """
    from sovcli.batch.textcodec import check_encoding
    from sovcli.errors import UsageError

    if not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError(
            f"--doc-timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds "
            f"(got {timeout:g})"
        )
    if memory_mib < MIN_MEMORY >> 20:
        raise UsageError(f"--doc-memory must be at least {MIN_MEMORY >> 20} MiB (got {memory_mib})")
    if memory_mib > MAX_MEMORY >> 20:
        raise UsageError(f"--doc-memory must be at most {MAX_MEMORY >> 20} MiB (got {memory_mib})")
    if encoding is not None:
        try:
            encoding = check_encoding(encoding)
        except ValueError as exc:
            raise UsageError(
                f"--encoding: {exc}", hint="e.g. --encoding cp1251, iso-8859-2, shift_jis, utf-16"
            ) from exc
    mode, lang = _ocr_choice(ocr, ocr_lang)
    return ExtractOptions(
        timeout=float(timeout),
        memory=memory_mib << 20,
        encoding=encoding,
        ocr=mode,
        ocr_lang=lang,
    )


def _ocr_choice(mode: str, lang: str | None) -> tuple[str, str | None]:
    """--ocr and --ocr-lang checked (UsageError)."""
    from sovcli.batch.ocr import OCR_MODES, check_languages
    from sovcli.errors import UsageError

    if mode not in OCR_MODES:
        raise UsageError(f"--ocr must be one of {', '.join(OCR_MODES)} (got '{mode}')")
    if lang is not None:
        try:
            lang = check_languages(lang)
        except ValueError as exc:
            raise UsageError(f"--ocr-lang: {exc}", hint="e.g. --ocr-lang eng+fra+deu") from exc
    return mode, lang


class WorkerUnavailable(RuntimeError):
    """A worker process could not be started (not a property of any document)."""


def extract_isolated(path: Path, options: ExtractOptions | None = None) -> str:
    """The text of `path` extracted within the limits of `options` (ExtractionError if not).

    Reasons specific to isolation: "timeout: ..." when the document took longer than
    `options.timeout`, "too large: ..." when it needed more memory than `options.memory`.
    """
    return extract_isolated_document(path, options).text


def extract_isolated_document(path: Path, options: ExtractOptions | None = None) -> Extracted:
    """Like `extract_isolated`, with what the record says about OCR (`Extracted`)."""
    options = options or ExtractOptions()
    if not options.isolate or not SUPPORTED:
        return extract_document(path, options.encoding, options.ocr_options)
    return _shared_pool().extract_document(path, options)


# --- the parent side ----------------------------------------------------------------------


def _timeout_reason(options: ExtractOptions) -> str:
    return f"timeout: extraction took longer than {options.timeout:g} s (see --doc-timeout)"


def _memory_reason(options: ExtractOptions) -> str:
    mib = options.memory // (1 << 20)
    return f"too large: extraction needed more than {mib} MiB of memory (see --doc-memory)"


class _Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        from sovcli.settings import debug_enabled

        paths = [p for p in sys.path if p]  # '' would be the current folder
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, json.dumps(paths)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None if debug_enabled() else subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the parent, which then stops us
            )
        except OSError as exc:
            raise WorkerUnavailable(f"cannot start an extraction worker: {exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.fd = self.proc.stdout.fileno()
        self.buffer = bytearray()
        try:
            ready = self._read_line(time.monotonic() + START_TIMEOUT)
        except (_Died, _TimedOut):
            ready = b""
        if ready.strip() != b'{"ready": true}':
            self.kill()
            raise WorkerUnavailable(
                f"an extraction worker did not start ({sys.executable}); "
                "run with SOVCLI_DEBUG=1 to see why"
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def extract(self, path: Path, options: ExtractOptions) -> Extracted:
        """Send one document; its text, or ExtractionError (the worker may then be dead)."""
        request = {
            "path": os.fsencode(os.path.abspath(path)).hex(),
            "encoding": options.encoding,
            "ocr": options.ocr,
            "ocr_lang": options.ocr_lang,
            "memory": options.memory,
            "alarm": int(options.timeout) + ALARM_GRACE,
        }
        deadline = time.monotonic() + options.timeout
        try:
            self.stdin.write(json.dumps(request).encode("ascii") + b"\n")
            self.stdin.flush()
            header = json.loads(self._read_line(deadline))
            while header.get("page"):  # an OCR'd page done: the limit starts again
                deadline = time.monotonic() + options.timeout
                header = json.loads(self._read_line(deadline))
            if not header.get("ok"):
                if header.get("fatal"):
                    self.kill()
                if header.get("memory"):
                    raise ExtractionError(_memory_reason(options))
                error = NeedsOCR if header.get("status") == NeedsOCR.status else ExtractionError
                raise error(str(header.get("error") or "extraction failed"))
            size = int(header["size"])
            if not 0 <= size <= MAX_TEXT_BYTES:
                self.kill()
                raise ExtractionError("too large: the extracted text is too long")
            return _extracted(header, self._read_text(size, deadline))
        except _TimedOut:
            self.kill()
            raise ExtractionError(_timeout_reason(options)) from None
        except (_Died, OSError, ValueError, KeyError, TypeError):
            raise ExtractionError(self._death_reason(options)) from None

    def _death_reason(self, options: ExtractOptions) -> str:
        self.kill()
        code = self.proc.returncode
        if code in (-signal.SIGKILL, -signal.SIGABRT):
            # SIGKILL: the kernel's out-of-memory killer; SIGABRT: C++ code (PDFium) that
            # could not allocate under the address-space limit (std::bad_alloc -> abort)
            return _memory_reason(options)
        if code == -signal.SIGALRM:
            return _timeout_reason(options)
        if code is not None and code < 0:
            return f"extraction crashed (signal {-code})"
        return f"extraction crashed (exit code {code})"

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TimedOut
        readable, _, _ = select.select([self.fd], [], [], remaining)
        if not readable:
            raise _TimedOut
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            raise _Died
        self.buffer += chunk

    def _read_line(self, deadline: float) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST_BYTES:
                raise _Died
            self._fill(deadline)
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def _read_text(self, size: int, deadline: float) -> str:
        """The next `size` bytes, decoded (without another copy of a long text)."""
        while len(self.buffer) < size:
            self._fill(deadline)
        with memoryview(self.buffer) as view:
            text = str(view[:size], "utf-8", "surrogatepass")
        del self.buffer[:size]
        return text

    def kill(self) -> None:
        """Stop the process now and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # reaped: no zombie left
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """Let an idle worker exit on end of input (killed if it does not)."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        self.kill()


def _extracted(header: dict[str, Any], text: str) -> Extracted:
    """The worker's answer as an Extracted (page lists of ints only)."""

    def pages(key: str) -> list[int]:
        value = header.get(key) or []
        return [int(n) for n in value] if isinstance(value, list) else []

    engine, lang = header.get("ocr_engine"), header.get("ocr_lang")
    return Extracted(
        text,
        ocr_pages=pages("ocr_pages"),
        ocr_engine=str(engine) if engine else None,
        ocr_lang=str(lang) if lang else None,
        unread_pages=pages("unread_pages"),
    )


class _TimedOut(Exception):
    pass


class _Died(Exception):
    pass


class ExtractorPool:
    """Worker processes shared by the threads of a run: at most `max_workers` at a time."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is None:
            from sovcli.system import usable_cpus

            max_workers = max(2, usable_cpus())
        self.max_workers = max_workers
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self.started = 0  # workers started so far (each replacement counts)

    def extract(self, path: Path, options: ExtractOptions) -> str:
        """The text of `path`, extracted in a worker; see `extract_isolated`."""
        return self.extract_document(path, options).text

    def extract_document(self, path: Path, options: ExtractOptions) -> Extracted:
        """Extract `path` in a worker; see `extract_isolated_document`."""
        with self._slots:
            worker = self._take()
            try:
                return worker.extract(path, options)
            finally:
                self._give_back(worker)

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                self._all.discard(worker)
                worker.kill()
        worker = _Worker()
        with self._lock:
            self._all.add(worker)
            self.started += 1
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive and not worker.buffer:
                self._idle.append(worker)
                return
            self._all.discard(worker)
        worker.kill()

    def pids(self) -> list[int]:
        """Process ids of the workers alive now (idle or busy)."""
        with self._lock:
            return [w.proc.pid for w in self._all if w.alive]

    def close(self) -> None:
        """Stop every worker (idle ones exit on end of input, busy ones are killed)."""
        with self._lock:
            workers = list(self._all)
            idle = set(self._idle)
            self._all.clear()
            self._idle.clear()
        for worker in workers:
            if worker in idle:
                worker.close()
            else:
                worker.kill()


_POOL: ExtractorPool | None = None
_POOL_LOCK = threading.Lock()


def _shared_pool() -> ExtractorPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ExtractorPool()
            atexit.register(_POOL.close)
        return _POOL


# --- the worker side ----------------------------------------------------------------------


def serve() -> None:
    """The worker's loop: a request per line on stdin, an answer on the original stdout."""
    import warnings

    from sovcli.batch.extract import allow_large_csv_fields
    from sovcli.batch.ocr import set_page_hook

    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints cannot corrupt the answers
    warnings.simplefilter("ignore")
    _no_core_dumps()  # a crash must not write document contents to disk
    allow_large_csv_fields()
    _send(answers, {"ready": True})
    requests = sys.stdin.buffer
    while True:
        line = requests.readline(MAX_REQUEST_BYTES)
        if not line:
            return
        request = json.loads(line)
        set_page_hook(functools.partial(_page_done, answers, max(1, int(request["alarm"]))))
        header, payload = _answer(request)
        _send(answers, header, payload)
        if header.get("fatal"):
            return


def _answer(request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Extract one document under its limits: (answer header, UTF-8 text)."""
    path = Path(os.fsdecode(bytes.fromhex(request["path"])))
    _limit_memory(int(request["memory"]))
    signal.alarm(max(1, int(request["alarm"])))  # SIGALRM's default action ends the process
    ocr = OcrOptions(mode=str(request.get("ocr") or "auto"), lang=request.get("ocr_lang"))
    try:
        result = extract_document(path, request.get("encoding"), ocr)
        payload = result.text.encode("utf-8", "surrogatepass")
        result.text = ""
        header = {
            "ok": True,
            "size": len(payload),
            "ocr_pages": result.ocr_pages,
            "ocr_engine": result.ocr_engine,
            "ocr_lang": result.ocr_lang,
            "unread_pages": result.unread_pages,
        }
        return header, payload
    except ExtractionError as exc:
        return {"ok": False, "error": str(exc), "status": exc.status}, b""
    except MemoryError:
        return {"ok": False, "memory": True, "fatal": True}, b""
    except RecursionError:
        return {"ok": False, "error": "too deeply nested to extract"}, b""
    except Exception as exc:  # a bug in a parser: this document fails, the worker goes on
        reason = f"extraction failed: {type(exc).__name__}: {short_reason(exc)}"
        return {"ok": False, "error": reason}, b""
    finally:
        signal.alarm(0)


def _page_done(answers: Any, alarm: int) -> None:
    """An OCR'd page is done: tell the parent, and give the next page the full time."""
    _send(answers, {"page": True})
    signal.alarm(alarm)


def _send(stream: Any, header: dict[str, Any], payload: bytes = b"") -> None:
    stream.write(json.dumps(header).encode("ascii") + b"\n")
    if payload:
        stream.write(payload)
    stream.flush()


def _limit_memory(limit: int) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _no_core_dumps() -> None:
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
