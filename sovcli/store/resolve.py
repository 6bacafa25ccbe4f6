"""Turn a model reference into an installed model.

`find_installed` never touches the network: a local .gguf path is used in place, anything
else is looked up in the store (`alias[:tag]`, `org/repo[:tag]`, `hf:org/repo[:QUANT]`).
`ensure_model` pulls what is missing.
"""

from __future__ import annotations

from pathlib import Path

from sovcli.errors import ModelNotFoundError
from sovcli.store.model import InstalledModel
from sovcli.store.names import parse_ref

DEFAULT_HUB_QUANT = "Q4_K_M"


def _local_path_model(path: Path) -> InstalledModel:
    from sovcli.store.ggufmeta import check_magic

    resolved = path.expanduser().resolve()
    check_magic(resolved)
    return InstalledModel(
        name=resolved.stem,
        tag="local",
        directory=resolved.parent,
        gguf_path=resolved,
        manifest={"source": {"kind": "path", "path": str(resolved)}},
    )


def _preferred_tag(name: str, kind: str) -> str | None:
    if kind == "alias":
        from sovcli.catalog import load_catalog

        entry = load_catalog().get(name)
        return entry.default_quant if entry else None
    return DEFAULT_HUB_QUANT


def find_installed(ref: str) -> InstalledModel | None:
    """The installed model `ref` names, or None. Never touches the network.

    Without a tag: the catalog's default quant if installed, else the only installed tag,
    else the most recently installed one.
    """
    from sovcli.store.registry import get_installed, tags_of

    candidate = Path(ref).expanduser()
    if ref.lower().endswith(".gguf") and candidate.is_file():
        return _local_path_model(candidate)
    parsed = parse_ref(ref)
    if parsed.kind in ("path", "bundle"):
        return None
    if parsed.tag:
        return get_installed(parsed.name, parsed.tag)
    installed = tags_of(parsed.name)
    if not installed:
        return None
    preferred = _preferred_tag(parsed.name, parsed.kind)
    for model in installed:
        if model.tag == preferred:
            return model
    if len(installed) == 1:
        return installed[0]
    return max(installed, key=lambda m: str(m.manifest.get("created_at", "")))


def ensure_model(ref: str, *, quiet: bool = False) -> InstalledModel:
    """The model for `ref`, pulled first when it is not installed."""
    found = find_installed(ref)
    if found is not None:
        return found
    parsed = parse_ref(ref)
    if parsed.kind == "path":
        raise ModelNotFoundError(
            f"no such model file: {parsed.path}", hint="Check the path, or name an installed model."
        )
    from sovcli.sources import pull_model

    return pull_model(ref, quiet=quiet)
