"""The one binding to llama.cpp (through llama-cpp-python): loading, version, log routing.

The engine and the converter both reach llama.cpp only through this module.

- `llama()` imports `llama_cpp` lazily (it is slow and pulls numpy), initialises the backend
  once per process and installs the one log callback.
- `version()` is the llama-cpp-python version (which pins the llama.cpp source), read from
  package metadata without importing it: this is what manifests and conversion records hold.
- `capture_log(sink)` routes llama.cpp's log lines to `sink` while a block runs (the quantizer
  reads per-tensor progress and error messages that way). Outside a capture the log is
  dropped, unless `SOVCLI_DEBUG=1` or a verbose engine asked to see it on stderr.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sovcli.errors import EngineError
from sovcli.settings import debug_enabled

LogSink = Callable[[str], None]

_lock = threading.Lock()
_module: Any = None
_callback: Any = None  # the ctypes callback must stay alive as long as llama.cpp may call it
_verbose = False
_sinks: list[LogSink] = []
_sinks_lock = threading.Lock()


def _on_log(level: int, text: bytes | None, user_data: Any) -> None:
    if not text:
        return
    message = text.decode("utf-8", errors="replace")
    try:
        with _sinks_lock:
            sinks = list(_sinks)
        for sink in sinks:
            sink(message)
        if _verbose or debug_enabled():
            sys.stderr.write(message)
            sys.stderr.flush()
    except Exception:  # a log line must never break decoding or quantizing
        pass


def llama(verbose: bool = False) -> Any:
    """The `llama_cpp` module, backend initialised and log routed; raises EngineError if missing.

    `verbose=True` shows llama.cpp's own log on stderr from then on.
    """
    global _module, _callback, _verbose
    if verbose:
        _verbose = True
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError(
                f"llama-cpp-python is not importable: {exc}",
                hint="Install it with: pip install 'llama-cpp-python>=0.3.16,<0.4'",
            ) from exc
        _callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_callback, None)
        llama_cpp.llama_backend_init()
        _module = llama_cpp
        return _module


def version() -> str | None:
    """The installed llama-cpp-python version (e.g. "0.3.36"), without importing it."""
    from importlib import metadata

    for dist in ("llama_cpp_python", "llama-cpp-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@contextlib.contextmanager
def capture_log(sink: LogSink) -> Iterator[None]:
    """Send llama.cpp's log text to `sink` (raw chunks, not split into lines) inside the block."""
    ll = llama()
    # Other code in the process (a test helper, llama-cpp-python's high-level API) may have
    # set its own callback since: take the log back for the capture.
    ll.llama_log_set(_callback, None)
    with _sinks_lock:
        _sinks.append(sink)
    try:
        yield
    finally:
        with _sinks_lock:
            _sinks.remove(sink)


def system_info() -> dict[str, Any]:
    """What this llama.cpp build can do: CPU features it uses, GPU offload, mmap, mlock."""
    try:
        ll = llama()
    except Exception as exc:
        return {"available": False, "error": str(exc)}
    info: dict[str, Any] = {"available": True, "llama_cpp_python": version()}
    try:
        raw = ll.llama_print_system_info()
        info["system_info"] = raw.decode("utf-8", errors="replace").strip() if raw else ""
    except Exception as exc:  # pragma: no cover - old builds
        info["system_info"] = f"unavailable: {exc}"
    info["gpu_offload"] = bool(ll.llama_supports_gpu_offload())
    info["mmap"] = bool(ll.llama_supports_mmap())
    info["mlock"] = bool(ll.llama_supports_mlock())
    return info
