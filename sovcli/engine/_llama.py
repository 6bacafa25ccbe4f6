"""Lazy access to llama-cpp-python's low-level bindings, with llama.cpp's log under control.

Importing `llama_cpp` is slow and pulls numpy, so front ends reach it only through
`llama()`. The first call also initialises the backend once per process and installs a
log callback that drops llama.cpp's chatter unless `verbose` or `SOVCLI_DEBUG=1` asks for it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from sovcli.errors import EngineError
from sovcli.paths import debug_enabled

_lock = threading.Lock()
_module: Any = None
_log_callback: Any = None  # the ctypes callback must stay alive as long as llama.cpp may call it
_verbose = False


def _on_log(level: int, text: bytes | None, user_data: Any) -> None:
    if (_verbose or debug_enabled()) and text:
        try:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        except Exception:  # a log line must never break decoding
            pass


def llama(verbose: bool = False) -> Any:
    """The `llama_cpp` module, backend initialised and log routed; raises EngineError if missing."""
    global _module, _log_callback, _verbose
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
        _log_callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_log_callback, None)
        llama_cpp.llama_backend_init()
        _module = llama_cpp
        return _module


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False) llama.cpp's own log from now on."""
    global _verbose
    _verbose = verbose
