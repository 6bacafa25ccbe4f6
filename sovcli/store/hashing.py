"""sha256 of files, streamed in large blocks (the one implementation sovcli uses)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def hash_into(digest: Any, path: Path, progress: Callable[[int], None] | None = None) -> int:
    """Feed the bytes of `path` to `digest` (a hashlib object); returns how many there were.

    `progress(nbytes)` is called after each block. A download that resumes a partial file
    uses this to continue hashing where the file ends.
    """
    size = 0
    with Path(path).open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
            size += len(block)
            if progress is not None:
                progress(len(block))
    return size


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of `path`; `progress(nbytes)` is called after each block."""
    digest = hashlib.sha256()
    hash_into(digest, path, progress)
    return digest.hexdigest()
