"""Fixtures for the conversion tests: the SmolLM2 round-trip checkpoint (built once per
session) and tiny random checkpoints for every supported architecture."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def load_script(name: str):
    """Import scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face checkpoint folder (bf16, 3 shards + index) rebuilt from the SmolLM2 GGUF."""
    make = load_script("make_hf_checkpoint")
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    return make.make_checkpoint(smollm2_gguf, out, dtype="bf16", shard_mb=120)


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The round-trip checkpoint converted back to an f16 GGUF (once per session)."""
    from sovcli.convert.converter import convert_checkpoint

    out = tmp_path_factory.mktemp("smollm2-gguf") / "smollm2-f16.gguf"
    convert_checkpoint(smollm2_hf, out, outtype="f16")
    return out


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the tiny checkpoints."""
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root: Path):
    """`tiny_checkpoint(kind, dtype="F32")` builds (once) and returns a tiny checkpoint folder."""
    from tiny_checkpoints import build

    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, dtype: str = "F32") -> Path:
        key = (kind, dtype)
        if key not in cache:
            cache[key] = build(kind, tiny_root / f"{kind}-{dtype.lower()}", dtype=dtype)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tiny_root: Path):
    """`tiny_gguf(kind, outtype="f32")` converts (once) and returns the GGUF path."""
    from sovcli.convert.converter import convert_checkpoint

    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, outtype: str = "f32") -> Path:
        key = (kind, outtype)
        if key not in cache:
            out = tiny_root / f"{kind}-{outtype}.gguf"
            convert_checkpoint(tiny_checkpoint(kind), out, outtype=outtype)
            cache[key] = out
        return cache[key]

    return get
