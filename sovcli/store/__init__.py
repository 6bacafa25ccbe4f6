"""The model store: layout, manifests, atomic writes, locks, verification.

It imports nothing above it (no catalog, no sources, no engine): turning a reference into an
installed model, pulling what is missing, lives in `sovcli.resolve`.
"""

from sovcli.store.model import InstalledModel

__all__ = ["InstalledModel"]
