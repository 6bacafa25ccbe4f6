"""Where a model lives in the store: `<home>/models/<name>/<tag>/` with `manifest.json`."""

from __future__ import annotations

from pathlib import Path

from sovcli import paths
from sovcli.errors import InvalidNameError
from sovcli.store.names import validate_file_name, validate_name, validate_tag

MANIFEST_NAME = "manifest.json"


def _inside(child: Path, root: Path) -> Path:
    """`child`, after checking that it resolves inside `root` (defence in depth)."""
    resolved_root = root.resolve()
    resolved = child.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise InvalidNameError(f"path {child} escapes the store")
    return child


def model_dir(name: str, tag: str) -> Path:
    """The directory of an installed model (validated, inside the store)."""
    validate_name(name)
    validate_tag(tag)
    root = paths.models_dir()
    return _inside(root / name / tag, root)


def partial_model_dir(name: str, tag: str) -> Path:
    """Where a pull of `name:tag` keeps its resumable downloads."""
    validate_name(name)
    validate_tag(tag)
    root = paths.partial_dir()
    return _inside(root / name.replace("/", "+") / tag, root)


def file_in(directory: Path, relpath: str) -> Path:
    """A file inside a model directory, refusing traversal."""
    validate_file_name(relpath)
    return _inside(directory / relpath, directory)


def lock_path(name: str) -> Path:
    """The lock file that serializes writes of one model name."""
    validate_name(name)
    return paths.locks_dir() / (name.replace("/", "+") + ".lock")
