"""The model store: layout, manifests, atomic writes, locks, verification.

Public API used by every front end:
- `ensure_model(ref, quiet=False) -> InstalledModel`: the installed model for `ref`
  (alias, `alias:TAG`, `hf:org/repo[:QUANT]`, installed `name:tag`, or a path to a
  .gguf file), pulling it first when it is not in the store yet.
- `find_installed(ref) -> InstalledModel | None`: no network, no pull.
"""

from sovcli.store.model import InstalledModel

__all__ = ["InstalledModel", "ensure_model", "find_installed"]


def find_installed(ref: str) -> InstalledModel | None:
    """The installed model `ref` names, or None. Never touches the network."""
    from sovcli.store.resolve import find_installed as _find

    return _find(ref)


def ensure_model(ref: str, *, quiet: bool = False) -> InstalledModel:
    """The installed model for `ref`, pulled first when missing (with progress on stderr)."""
    from sovcli.store.resolve import ensure_model as _ensure

    return _ensure(ref, quiet=quiet)
