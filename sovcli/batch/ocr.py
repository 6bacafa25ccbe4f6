"""OCR on the CPU, offline: the Tesseract program (Debian `tesseract-ocr` + language packs).

Tesseract is run as a program, not through a Python wrapper: the page image goes in on its
stdin and the text comes back on its stdout, so no page of a document is ever written to a
temporary file (pytesseract writes both). It runs with one OpenMP thread, inside the
extraction worker (so under the worker's memory limit, which the child inherits), and dies
with the worker (PR_SET_PDEATHSIG) when a timeout kills it. Nothing is downloaded: the
language models are the `.traineddata` files the site installed (see docs/batch.md).
Tesseract separates the pages of a multi-page TIFF with a form feed; `ocr_image` returns
one text per page.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

OCR_MODES = ("auto", "always", "never")
DEFAULT_LANGS = ("eng", "fra", "deu")  # those of them that are installed
OCR_DPI = 300  # PDF pages are rendered at this resolution for OCR
PAGE_TIMEOUT = 600.0  # seconds for one tesseract call (the document timeout is the real bound)
_LANG = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}(\+[A-Za-z][A-Za-z0-9_]{0,31}){0,15}$")
MAX_OCR_PAGES = 2000  # pages of one document; beyond, the document is "too large"
_PAGE_HOOKS: list[Callable[[], None]] = []  # the extraction worker's heartbeat
INSTALL_HINT = (
    "install Tesseract: apt-get install tesseract-ocr tesseract-ocr-fra tesseract-ocr-deu "
    "(offline: carry the .deb files in, see docs/batch.md), then re-run with --retry-failed"
)


class OcrUnavailable(RuntimeError):
    """The OCR program is missing or cannot run; the message says why."""


@dataclass(frozen=True)
class OcrEngine:
    """The OCR program found on this machine."""

    path: str
    version: str  # "5.3.0"

    @property
    def label(self) -> str:
        """The engine as a record names it: "tesseract 5.3.0"."""
        return f"tesseract {self.version}"


@functools.lru_cache(maxsize=1)
def find_engine() -> OcrEngine | None:
    """Tesseract on PATH (and its version), or None when it is not installed."""
    path = shutil.which("tesseract")
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, timeout=30, check=False, env=_child_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = (done.stdout + done.stderr).decode("utf-8", "replace").split()
    if done.returncode != 0 or len(words) < 2 or words[0].lower() != "tesseract":
        return None
    return OcrEngine(path=path, version=words[1])


@functools.lru_cache(maxsize=1)
def installed_languages() -> frozenset[str]:
    """The language packs Tesseract has (empty when it is not installed)."""
    engine = find_engine()
    if engine is None:
        return frozenset()
    try:
        done = subprocess.run(
            [engine.path, "--list-langs"],
            capture_output=True,
            timeout=30,
            check=False,
            env=_child_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    return frozenset(line.strip() for line in lines[1:] if line.strip())  # line 1: a title


def default_languages() -> str:
    """eng+fra+deu, or those of them that are installed ("eng" when none is)."""
    have = installed_languages()
    chosen = [lang for lang in DEFAULT_LANGS if lang in have]
    return "+".join(chosen) or "eng"


def check_languages(lang: str) -> str:
    """`lang` ("eng+fra") checked: well formed, and installed when Tesseract is.

    ValueError with the missing packs named. Without Tesseract only the form is checked
    (documents that need OCR then get the status needs_ocr).
    """
    if not _LANG.match(lang):
        raise ValueError(f"'{lang}' is not a list of Tesseract languages like eng+fra+deu")
    have = installed_languages()
    missing = [part for part in lang.split("+") if have and part not in have]
    if missing:
        packs = " ".join(f"tesseract-ocr-{m.lower().replace('_', '-')}" for m in missing)
        raise ValueError(
            f"Tesseract has no language pack for {', '.join(missing)} "
            f"(installed: {'+'.join(sorted(have))}); install {packs}"
        )
    return lang


def ocr_image(image: bytes, lang: str, timeout: float = PAGE_TIMEOUT) -> list[str]:
    """The text of every page of an image (PNG, JPEG, TIFF, PNM ...), one string per page.

    OcrUnavailable when Tesseract is missing; RuntimeError when it fails on this image.
    """
    engine = find_engine()
    if engine is None:
        raise OcrUnavailable("no OCR engine (Tesseract) installed")
    try:
        done = subprocess.run(
            [engine.path, "stdin", "stdout", "-l", lang, "--psm", "3"],
            input=image,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=_child_env(),
            preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"OCR took longer than {timeout:g} s") from exc
    except OSError as exc:
        raise OcrUnavailable(f"cannot run Tesseract: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = message[-1][:200] if message else f"exit code {done.returncode}"
        raise RuntimeError(f"OCR failed: {reason}")
    pages = done.stdout.decode("utf-8", "replace").split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()  # the form feed after the last page
    return pages


def set_page_hook(hook: Callable[[], None] | None) -> None:
    """Call `hook` after each page OCR'd in this process (None: no more calls).

    The extraction worker uses it to tell its parent that a long scan is moving, so that
    the time limit applies per OCR'd page rather than to the whole document.
    """
    _PAGE_HOOKS.clear()
    if hook is not None:
        _PAGE_HOOKS.append(hook)


def page_done() -> None:
    """Report one OCR'd page to the hook, if any."""
    for hook in _PAGE_HOOKS:
        hook()


def _child_env() -> dict[str, str]:
    """Tesseract's environment: ours, with one OpenMP thread (generation keeps the cores)."""
    env = dict(os.environ)
    env["OMP_THREAD_LIMIT"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the extraction worker dies (Linux)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
