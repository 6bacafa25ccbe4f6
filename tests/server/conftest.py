"""Fixtures: a real `sovcli serve` subprocess on a free loopback port, with the SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import API_KEY, OTHER_KEY, start_server


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module: 8 parallel sequences, small context, keys, audit log."""
    workdir = tmp_path_factory.mktemp("serve")
    proc = start_server(
        smollm2_gguf,
        workdir,
        "--parallel",
        "8",
        "--ctx",
        "1024",
        "--threads",
        "1",
        "--max-body-kib",
        "64",
        "--max-tokens",
        "512",
        "--audit-log",
        str(workdir / "audit.jsonl"),
        keys=f"team-a:{API_KEY},team-b:{OTHER_KEY}",
    )
    yield proc
    proc.stop()
