"""Builders of hostile inputs for the store tests (a helper module, not a test), and the
checks every refusal must pass: one error line, the documented exit code, nothing left."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

MARKER = "sovcli-bundle.json"
FORMAT = "sovcli-bundle/1"


def manifest_for(gguf: Path, name: str = "tiny", tag: str = "Q8_0", **extra: Any) -> dict:
    """A bundle manifest naming the one file `gguf` (its real size and sha256)."""
    data = gguf.read_bytes()
    record = {"path": gguf.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"name": name, "tag": tag, "gguf": gguf.name, "files": [record], **extra}


def write_bundle(
    path: Path,
    manifest: Any,
    members: dict[str, bytes | Path],
    *,
    marker: bytes | None = None,
    gzip: bool = False,
) -> Path:
    """A bundle: the marker (`marker` bytes, else the manifest wrapped) then `members`."""
    if marker is None:
        marker = json.dumps({"format": FORMAT, "manifest": manifest}).encode()
    with tarfile.open(path, "w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MARKER, marker)
        for name, content in members.items():
            _add(tar, name, content.read_bytes() if isinstance(content, Path) else content)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _one_key(key: bytes) -> bytes:
    """A GGUF v3 header with no tensor and one metadata key (its value to follow)."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key


def deep_gguf(path: Path, depth: int) -> Path:
    """A GGUF whose one metadata value is an array of arrays `depth` deep (no tensors)."""
    arrays = struct.pack("<IQ", 9, 1) * (depth - 1)  # each: an array of one array
    innermost = struct.pack("<IQ", 4, 0)  # an empty array of u32
    path.write_bytes(_one_key(b"evil.nested") + struct.pack("<I", 9) + arrays + innermost)
    return path


def array_gguf(path: Path, element_type: int, count: int) -> Path:
    """A GGUF whose one array claims `count` elements of `element_type` in 64 bytes."""
    array = struct.pack("<I", 9) + struct.pack("<IQ", element_type, count)
    path.write_bytes(_one_key(b"evil.count") + array + b"\0" * 64)
    return path


def long_key_gguf(path: Path) -> Path:
    """A GGUF whose first key claims to be 2**40 bytes long."""
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40))
    return path


def sovcli(
    *args: str, env: dict[str, str] | None = None, limit_file_size: int | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m sovcli ARGS` (this test's environment), optionally with RLIMIT_FSIZE:
    a process that writes past it is killed (SIGXFSZ), so a bounded write is proven."""

    def limit() -> None:
        import resource

        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run(
        [sys.executable, "-m", "sovcli", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=120,
        preexec_fn=limit,
    )


def assert_refused(result: Any, code: int | tuple[int, ...], *fragments: str) -> str:
    """A refusal: exit `code`, exactly one `error:` line holding every fragment, no
    traceback. Works for a CliRunner result and a CompletedProcess; returns the line."""
    exit_code = getattr(result, "exit_code", getattr(result, "returncode", None))
    codes = code if isinstance(code, tuple) else (code,)
    assert exit_code in codes, f"exit {exit_code}: {result.stderr}"
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    after = lines[errors[0] + 1 :]  # nothing but the hint follows the error: one line each
    assert len(after) <= 1 and all(line.startswith("hint: ") for line in after), result.stderr
    assert all(f in lines[errors[0]] for f in fragments), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[errors[0]]


def assert_nothing_left(home: Path) -> None:
    """No model registered, no file left under `partial/` (locks may stay)."""
    models = home / "models"
    assert not models.exists() or not any(models.iterdir()), list(models.rglob("*"))
    partial = home / "partial"
    left = [p for p in partial.rglob("*") if not p.is_dir()] if partial.exists() else []
    assert left == []
    work = [p for p in partial.rglob("*") if "@" in p.name] if partial.exists() else []
    assert work == []
