"""Where a model lives in the store: `<home>/models/<name>/<tag>/` with `manifest.json`."""

from __future__ import annotations

from pathlib import Path

from sovcli import paths
from sovcli.errors import InvalidNameError
from sovcli.store.names import validate_file_name, validate_name, validate_tag

MANIFEST_NAME = "manifest.json"
OWNER_SEPARATOR = "@"
"""Work directories under `partial/` are named `<lock key>@<uuid>`: the lock says if their
owner still runs (see `sovcli.store.sweep`)."""


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
    return _inside(root / lock_key(name) / tag, root)


def work_dir(kind: str, name: str, suffix: str = "") -> Path:
    """A new, unique work path `partial/<kind>/<lock key>@<uuid><suffix>` for a writer of
    `name` (who holds its lock): `.staging` for installs, `.bundle` for bundle imports."""
    import uuid

    unique = f"{lock_key(name)}{OWNER_SEPARATOR}{uuid.uuid4().hex}{suffix}"
    return paths.partial_dir() / kind / unique


def owner_of(entry_name: str) -> str | None:
    """The model name whose lock guards a work directory named `<lock key>@...`, or None."""
    key, sep, _rest = entry_name.partition(OWNER_SEPARATOR)
    if not sep:
        return None
    name = key.replace("+", "/")
    try:
        return validate_name(name)
    except InvalidNameError:
        return None


def file_in(directory: Path, relpath: str) -> Path:
    """A file inside a model directory, refusing traversal."""
    validate_file_name(relpath)
    return _inside(directory / relpath, directory)


def lock_key(name: str) -> str:
    """`name` as one path component ('/' -> '+'): its lock file and its `partial/` folder."""
    validate_name(name)
    return name.replace("/", "+")


def lock_path(name: str) -> Path:
    """The lock file that serializes writes of one model name."""
    return paths.locks_dir() / (lock_key(name) + ".lock")
