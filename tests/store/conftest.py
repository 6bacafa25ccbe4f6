"""Fixtures for the store tests: a local hub, tiny GGUF files, the CLI runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from .hub_server import HubServer


def make_gguf(path: Path, *, file_type: int = 15, rows: int = 8, name: str = "tiny") -> Path:
    """Write a small valid llama-arch GGUF (one F32 tensor of `rows` x 64) and return its path."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(2048)
    writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.arange(rows * 64, dtype=np.float32).reshape(rows, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def runner() -> CliRunner:
    """Typer's CLI runner."""
    return CliRunner()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running local hub; HF_ENDPOINT points at it."""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="session")
def tiny_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GGUFs: Q4_K_M (15), Q8_0 (7), Q5_K_M (17), three shards, and a 24 MB one."""
    base = tmp_path_factory.mktemp("ggufs")
    files = {
        "Q4_K_M": make_gguf(base / "tiny-Q4_K_M.gguf", file_type=15, name="tiny q4"),
        "Q8_0": make_gguf(base / "tiny-Q8_0.gguf", file_type=7, name="tiny q8"),
        "Q5_K_M": make_gguf(base / "tiny-Q5_K_M.gguf", file_type=17, name="tiny q5"),
        "big": make_gguf(base / "big-Q4_K_M.gguf", file_type=15, rows=96_000, name="big"),
    }
    for i in range(1, 4):
        files[f"shard{i}"] = make_gguf(
            base / f"split-Q4_K_M-{i:05d}-of-00003.gguf", file_type=15, rows=4 + i, name="split"
        )
    return files
