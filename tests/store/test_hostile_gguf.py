"""Malformed GGUF headers are an IntegrityError, never a crash (issue #13, finding 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sovcli.cli.main import app

from .hostile import (
    array_gguf,
    assert_nothing_left,
    assert_refused,
    deep_gguf,
    long_key_gguf,
    sovcli,
)


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_100k_deep_array_is_a_malformed_gguf_not_a_crash(
    runner, tmp_path: Path, isolated_env: Path
) -> None:
    """Arrays of arrays 100,000 deep (1.2 MB): exit 7 "malformed GGUF", not exit 70."""
    deep = deep_gguf(tmp_path / "deep.gguf", 100_000)
    result = sovcli("import", str(deep))
    assert_refused(result, 7, "deep.gguf is a malformed GGUF file", "nested more than 8 deep")
    for command in (["verify", str(deep)], ["show", str(deep)]):
        assert_refused(runner.invoke(app, command), 7, "malformed GGUF")
    assert_nothing_left(isolated_env)


def test_nesting_within_the_limit_is_read(tmp_path: Path) -> None:
    from sovcli.store.ggufmeta import _parse_header

    header, _start = _parse_header(deep_gguf(tmp_path / "ok.gguf", 3))
    assert header.kv["evil.nested"] == [[[]]]


@pytest.mark.parametrize(
    "build",
    [
        lambda p: array_gguf(p, 9, 1 << 62),
        long_key_gguf,
        lambda p: array_gguf(p, 8, 1 << 60),
        lambda p: array_gguf(p, 77, 1),
    ],
    ids=["2**62 nested arrays", "2**40-byte key", "2**60 strings", "unknown element type"],
)
def test_counts_past_the_end_of_the_file_are_refused_at_once(runner, tmp_path: Path, build) -> None:
    path = tmp_path / "count.gguf"
    build(path)
    assert_refused(runner.invoke(app, ["import", str(path)]), 7, "malformed GGUF")
