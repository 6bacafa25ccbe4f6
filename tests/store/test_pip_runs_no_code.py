"""A hostile catalog cannot make pip build (run) anything (issue #13, finding 4).

The hostile project is real: its in-tree build backend writes a marker file the moment pip
imports it (the control case shows pip does when asked to download that folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .hostile import assert_refused, sovcli

PYPROJECT = """[build-system]
requires = []
build-backend = "evil_backend"
backend-path = ["."]
"""


def _project(folder: Path, marker: Path) -> Path:
    """A source tree whose build backend, once imported, writes `marker`."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "evil_backend.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n"
    )
    (folder / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n"
    )
    (folder / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    return folder


def _catalog(tmp_path: Path, package: str) -> None:
    (tmp_path / "user-models.toml").write_text(
        '[models.evil]\ndescription = "d"\ndefault_quant = "Q4_0"\n[[models.evil.sources]]\n'
        f'kind = "pypi"\npackage = "{package}"\nversion = "1.0"\nmember = "evil/m.gguf"\n'
        'quant = "Q4_0"\n'
    )


@pytest.mark.slow  # runs pip twice (~5 s)
def test_catalog_naming_a_local_project_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    project = _project(tmp_path / "project", marker)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    control = subprocess.run(
        [*pip, "--disable-pip-version-check", "-d", str(tmp_path / "dl"), str(project)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert marker.read_text() == "code ran", control.stderr  # pip runs a local project
    marker.unlink()

    _catalog(tmp_path, str(project))
    result = sovcli("pull", "evil")
    assert_refused(result, 3, "models.evil.sources[0].package", "invalid package name")
    assert not marker.exists()


@pytest.mark.slow  # runs pip (~2 s)
def test_an_index_holding_only_an_sdist_runs_no_build_backend(tmp_path: Path) -> None:
    """A valid name whose index entry is a source archive: pip fetches wheels only."""
    marker = tmp_path / "MARKER"
    project = _project(tmp_path / "evil-1.0", marker)
    index = tmp_path / "index"
    index.mkdir()
    with tarfile.open(index / "evil-1.0.tar.gz", "w:gz") as tar:
        tar.add(project, arcname="evil-1.0")
    _catalog(tmp_path, "evil")
    env = {**os.environ, "PIP_FIND_LINKS": str(index), "PIP_NO_INDEX": "1"}
    result = sovcli("pull", "evil", env=env)
    assert_refused(result, 4, "evil==1.0 is not on the configured package index")
    assert not marker.exists()
