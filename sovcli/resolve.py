"""What a model reference means: the one place between the front ends and the sources.

A reference is resolved, top to bottom: a .gguf path (used in place, or imported), a bundle
(`FILE.tar`), a catalog alias (`smollm2-135m[:Q8_0]` -> its entry -> its sources in order),
or a hub reference (`hf:org/repo[:QUANT]`, `hf:org/repo/file.gguf`) -> one hub source. The
sources (`sovcli.sources.fetch`) then download, verify and register into the store.

- `find_installed(ref)`: the installed model, or None; never touches the network.
- `require_installed(ref, action=None)`: the same, or ModelNotFoundError with a useful hint;
  with an `action` ("export", "sign", ...) the site policy must allow it (PolicyDenied).
- `ensure_model(ref, action="run")`: the installed model, pulled first when missing, that
  the site policy allows `action` on (`governance.policy.enforce_use`).
- `pull(ref, options)` / `pull_model(ref, options)`: fetch, verify and register (what
  `sovcli pull` does); `FetchOptions` holds revision, endpoint, force, keep_source and the
  `progress` (a `sovcli.progress.Progress`) to report to. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sovcli.errors import ModelNotFoundError, StoreError, UsageError
from sovcli.governance.audit import audit_store_change, require_trail
from sovcli.governance.policy import current_policy, enforce_source, enforce_use
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.sources import FetchOptions, fetch
from sovcli.sources.catalog import Source, close_names, load_catalog
from sovcli.store.model import InstalledModel
from sovcli.store.names import DEFAULT_HUB_QUANT, parse_ref
from sovcli.store.registry import get_installed, list_installed, tags_of

if TYPE_CHECKING:
    from sovcli.sources.bundle import BundleImport


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
        entry = load_catalog().get(name)
        return entry.default_quant if entry else None
    return DEFAULT_HUB_QUANT


def find_installed(ref: str) -> InstalledModel | None:
    """The installed model `ref` names, or None. Never touches the network.

    Without a tag: the catalog's default quant if installed, else the only installed tag,
    else the most recently installed one.
    """
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


def require_installed(ref: str, action: str | None = None) -> InstalledModel:
    """The installed model `ref` names; ModelNotFoundError (with a hint) when there is none.

    A path that does not exist says so, rather than suggesting to pull it. With `action`,
    the site policy must allow it on the model (PolicyDenied, exit 11, otherwise).
    """
    model = find_installed(ref)
    if model is not None:
        if action is not None:
            enforce_use(model, action)
        return model
    parsed = parse_ref(ref)
    if parsed.kind in ("path", "bundle"):
        path = Path(parsed.path or "").expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"no such file: {parsed.path}",
                hint="Check the path, or name an installed model (see `sovcli list`).",
            )
        raise UsageError(
            f"{parsed.path} is not an installed model",
            hint=f"Import it first: `sovcli pull {ref}`.",
        )
    close = close_names(ref, sorted({m.ref for m in list_installed()}))
    hint = f"Did you mean {' or '.join(close)}?" if close else "See `sovcli list`."
    raise ModelNotFoundError(
        f"model '{ref}' is not installed", hint=f"{hint} Or pull it: `sovcli pull {ref}`."
    )


def ensure_model(
    ref: str, *, action: str = "run", progress: Progress | None = None
) -> InstalledModel:
    """The model for `ref`, pulled first when it is not installed, once the site policy
    allows `action` on it ("run", "chat", "serve", "batch", "bench", "embed")."""
    found = find_installed(ref)
    if found is None:
        parsed = parse_ref(ref)
        if parsed.kind == "path":
            raise ModelNotFoundError(
                f"no such model file: {parsed.path}",
                hint="Check the path, or name an installed model.",
            )
        require_trail()
        found = pull_model(ref, FetchOptions(progress=progress or NULL_PROGRESS))
        audit_store_change("pull", found, reference=ref)
    enforce_use(found, action)
    return found


@dataclass(frozen=True)
class PullResult:
    """What `pull` did: the model, and whether it was already installed (nothing fetched)."""

    model: InstalledModel
    already_installed: bool


def pull(ref: str, options: FetchOptions | None = None) -> PullResult:
    """`sovcli pull`: an installed model is kept, unless `force` or another `revision`.

    A site policy that cannot be read stops the pull even then (fail closed), and so does
    an audit trail that cannot be written; a model pulled is recorded in it."""
    current_policy()
    require_trail()
    options = options or FetchOptions()
    parsed = parse_ref(ref)
    if parsed.kind == "bundle":
        imported = _import_bundle(parsed.path or "", options)
        if not imported.already_installed:
            audit_store_change("pull", imported.model, reference=ref)
        return PullResult(imported.model, already_installed=imported.already_installed)
    if not options.force and parsed.kind in ("alias", "hf", "name"):
        try:
            found = find_installed(ref)
        except StoreError:  # a broken manifest: pulling again replaces the model
            found = None
        if found is not None:
            src = found.manifest.get("source") or {}
            same_revision = not options.revision or options.revision in (
                src.get("revision"),
                src.get("commit"),
            )
            if same_revision and _is_the_catalog_file(found, parsed.kind, options.progress):
                return PullResult(found, already_installed=True)
            options = replace(options, force=True)  # another revision, or not the pinned file
    pulled = pull_model(ref, options)
    audit_store_change("pull", pulled, reference=ref)
    return PullResult(pulled, already_installed=False)


def _is_the_catalog_file(model: InstalledModel, kind: str, progress: Progress) -> bool:
    """False when `model` stands under a catalog alias but is not the file its catalog pins
    (registered by an older sovcli from a forged bundle, say): the pull replaces it."""
    if kind != "alias":
        return True
    from sovcli.store.registry import pin_problem

    pins = load_catalog().pinned_sha256(model.name, model.tag)
    problem = pin_problem(model.manifest["files"], model.manifest["gguf"], pins)
    if problem:
        progress.note(f"{model.ref} is not the catalog's file ({problem}); pulling it again")
    return problem is None


def _import_bundle(path: str, options: FetchOptions) -> BundleImport:
    from sovcli.sources.bundle import import_bundle

    enforce_source("bundle", str(Path(path).expanduser()), "pull")
    return import_bundle(Path(path), force=options.force, progress=options.progress)


def pull_model(ref: str, options: FetchOptions | None = None) -> InstalledModel:
    """Fetch, verify and register the model `ref` names; returns it installed.

    The sources decide nothing about names: an alias becomes its catalog entry's sources,
    a hub reference one hub source. An installed model is returned as is unless `force`.
    """
    options = options or FetchOptions()
    parsed = parse_ref(ref)
    if parsed.kind == "path":
        from sovcli.sources.local import import_gguf

        return import_gguf(Path(parsed.path or ""), progress=options.progress, action="pull")
    if parsed.kind == "bundle":
        return _import_bundle(parsed.path or "", options).model
    if parsed.kind == "alias":
        entry = load_catalog().require(parsed.name)
        quant = parsed.tag or entry.default_quant
        sources = entry.sources_for(quant)
        if not sources:
            offered = sorted({s.quant for s in entry.sources if s.quant})
            raise ModelNotFoundError(
                f"'{entry.alias}' has no source for {quant}",
                hint=f"Available: {', '.join(f'{entry.alias}:{q}' for q in offered)}.",
            )
        return fetch(entry.alias, quant, sources, entry, options)
    # hf:org/repo[...] or an org/repo name
    source = Source(kind="hf", repo=parsed.name, file=parsed.file, revision=options.revision)
    return fetch(parsed.name, parsed.tag, [source], None, options)


def pull_sources(ref: str, endpoint: str | None = None) -> list[tuple[str, str, str | None, str]]:
    """Where `pull ref` would fetch from, in order, as the site policy names sources:
    (kind, location, model, description), kind hub/pypi/bundle/file (for `policy check`).
    Reads no network."""
    from sovcli.sources.hub import hub_endpoint

    parsed = parse_ref(ref)
    if parsed.kind in ("path", "bundle"):
        kind = "file" if parsed.kind == "path" else "bundle"
        path = str(Path(parsed.path or "").expanduser())
        return [(kind, path, None, path)]
    hub = hub_endpoint(endpoint)
    if parsed.kind != "alias":
        model = f"{parsed.name}:{parsed.tag}" if parsed.tag else parsed.name
        return [("hub", hub, model, f"hf:{parsed.name} at {hub}")]
    entry = load_catalog().require(parsed.name)
    quant = parsed.tag or entry.default_quant
    model = f"{entry.alias}:{quant}" if quant else entry.alias
    return [
        (
            ("pypi", f"{s.package}=={s.version}", model, s.describe())
            if s.kind == "pypi"
            else ("hub", hub, model, f"{s.describe()} at {hub}")
        )
        for s in entry.sources_for(quant)
    ]
