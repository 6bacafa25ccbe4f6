"""What every source shares: the result of a fetch, disk-space checks, the offline switch."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli import settings
from sovcli.errors import DiskFullError, NetworkError
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.registry import FileToInstall

# Keep this much free beyond the download itself (manifest, temp files, the filesystem's own needs).
DISK_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """How a pull fetches, whatever the source."""

    revision: str | None = None  # hub branch, tag or commit (default: the source's, else main)
    endpoint: str | None = None  # hub URL (default: $HF_ENDPOINT, else huggingface.co)
    keep_source: bool = False  # keep a safetensors checkpoint after converting it
    force: bool = False  # fetch again even when the model is installed
    progress: Progress = NULL_PROGRESS  # where downloads, conversion and notes are reported


@dataclass
class Fetched:
    """The result of fetching one model from one source."""

    files: list[FileToInstall]
    source: dict[str, Any]  # provenance recorded in the manifest under "source"
    tag: str
    gguf_file: str | None = None
    conversion: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    cleanup: list[Path] = field(default_factory=list)  # directories to remove after install


REASON_LIMIT = 200
"""Characters of an error's text kept in a message or a note (cut at a word, with "...")."""


def one_line(exc: BaseException, limit: int = REASON_LIMIT) -> str:
    """The text of `exc` on one line: whitespace and control characters collapsed to spaces,
    cut cleanly at a word boundary with "..." past `limit` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    text = text or type(exc).__name__
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut + "..."


def ensure_free_space(directory: Path, needed: int, what: str) -> None:
    """Raise DiskFullError before a download that cannot fit."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed + DISK_MARGIN > free:
        raise DiskFullError(
            f"not enough disk space for {what}: need {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free under {directory}"
        )


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or its cause) is ENOSPC."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def offline_error(name: str) -> NetworkError:
    """The error for a model that is not in the store while HF_HUB_OFFLINE=1."""
    return NetworkError(
        f"{name} is not in the store and HF_HUB_OFFLINE=1 forbids downloading it",
        hint="Unset HF_HUB_OFFLINE (or set HF_ENDPOINT to your site's mirror), import the file "
        "with `sovcli import PATH.gguf`, or pull an air-gap bundle.",
    )


def refuse_when_offline(name: str) -> None:
    """Raise `offline_error(name)` when HF_HUB_OFFLINE=1 (no source may touch the network)."""
    if settings.offline():
        raise offline_error(name)
