"""The site policy at the server: every model load asks it first (a refusal is a 403).

`serve` checks the models named on its command line before it listens; this module is for
the loads after that: a model found in the store on demand, and a model loaded again after
its keep-alive unloaded it (the policy may have changed meanwhile).
"""

from __future__ import annotations

from typing import Any

from sovcli.errors import ModelNotFoundError
from sovcli.governance.policy import current_policy, enforce_use
from sovcli.server.settings import ServedModel


def check_load(served: ServedModel, installed: Any = None) -> None:
    """PolicyDenied (the server answers 403) when the site policy refuses to serve it."""
    if current_policy() is None:
        return
    enforce_use(installed if installed is not None else installed_for(served), "serve")


def installed_for(served: ServedModel) -> Any:
    """The store model whose file `served` loads (else that file as a model used in place)."""
    from sovcli.resolve import find_installed
    from sovcli.store.registry import list_installed

    found = find_installed(served.ref)
    if found is not None and str(found.gguf_path) == served.path:
        return found
    for model in list_installed():
        if str(model.gguf_path) == served.path:
            return model
    found = find_installed(served.path)
    if found is None:
        raise ModelNotFoundError(f"the model file {served.path} is gone")
    return found
