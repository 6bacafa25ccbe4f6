"""Turn a model reference into an installed model (placeholder: local .gguf paths only).

The store issue replaces this with aliases, hub references and pulls.
"""

from __future__ import annotations

from pathlib import Path

from sovcli.errors import ModelNotFoundError
from sovcli.store.model import InstalledModel


def find_installed(ref: str) -> InstalledModel | None:
    """A local .gguf path used in place; the store is not built yet."""
    path = Path(ref).expanduser()
    if path.is_file():
        return InstalledModel(
            name=path.stem, tag="local", directory=path.parent.resolve(), gguf_path=path.resolve()
        )
    return None


def ensure_model(ref: str, *, quiet: bool = False) -> InstalledModel:
    """The model for `ref`; only local paths until pulls land."""
    found = find_installed(ref)
    if found is None:
        raise ModelNotFoundError(f"model '{ref}' not found", hint="Pass a path to a .gguf file.")
    return found
