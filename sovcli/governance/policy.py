"""The site policy. INTERFACE STUB: the policy helper fills it in.

Actions: "pull", "import", "export", "run", "chat", "serve", "batch", "embed", "sign".
"""

from __future__ import annotations

from sovcli.store.model import InstalledModel


def enforce_use(model: InstalledModel, action: str) -> None:
    """Raise PolicyDenied (after an audit record) if the policy forbids `action` on `model`."""
    return None


def enforce_source(kind: str, location: str, action: str = "pull") -> None:
    """Raise PolicyDenied if the policy forbids fetching from `kind` ("hub", "mirror", "pypi",
    "bundle", "file", "path") at `location`; also applies `network = "deny"` to network kinds."""
    return None


def enforce_files(directory: object, manifest: dict, action: str) -> None:
    """Raise PolicyDenied if files not yet registered (a bundle's, a pull's) break the policy:
    signature from a trust anchor, allow-listed digest/name/licence. Called before registering."""
    return None


def current_policy() -> None:
    """The site policy in force, or None (no policy file: today's behaviour)."""
    return None
