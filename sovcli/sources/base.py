"""What a source hands back to the pull: files ready to install and their provenance."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.errors import DiskFullError
from sovcli.store.registry import FileToInstall

# Keep this much free beyond the download itself (manifest, temp files, the filesystem's own needs).
DISK_MARGIN = 64 * 1024 * 1024


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
