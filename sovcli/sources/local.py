"""Local files: `sovcli import PATH.gguf` and `sovcli pull ./model.gguf` (split shards included)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sovcli.errors import IntegrityError, ModelNotFoundError
from sovcli.governance.policy import current_policy, enforce_files, enforce_source
from sovcli.progress import Progress
from sovcli.sources.catalog import load_catalog
from sovcli.store.hashing import sha256_file
from sovcli.store.model import InstalledModel
from sovcli.store.names import quant_from_filename, shard_info, slugify, validate_name, validate_tag
from sovcli.store.registry import FileToInstall, InstallSpec, install_locked

_QUANT_SUFFIX = re.compile(r"[-_.](?:i?q\d[\w]*|f16|f32|bf16|fp16)\Z", re.IGNORECASE)


def shard_paths(path: Path) -> list[Path]:
    """All shards of a split GGUF given its first shard (or `[path]` for a single file)."""
    info = shard_info(path.name)
    if info is None:
        return [path]
    stem, index, total = info
    if index != 1:
        raise IntegrityError(
            f"{path.name} is shard {index} of {total}",
            hint=f"Pass the first shard, {stem}-00001-of-{total:05d}.gguf.",
        )
    shards = [path.with_name(f"{stem}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"split model is incomplete: missing {', '.join(missing)}",
            hint="Put every shard in the same folder as the first one.",
        )
    return shards


def default_name(path: Path) -> str:
    """A store name from a file name: `SmolLM2-135M-Instruct.Q4_1.gguf` -> smollm2-135m-instruct."""
    stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.stem
    info = shard_info(path.name)
    if info:
        stem = info[0]
    stem = _QUANT_SUFFIX.sub("", stem)
    return slugify(stem)


def import_gguf(
    path: Path,
    *,
    name: str | None = None,
    tag: str | None = None,
    link: bool = False,
    source: dict[str, Any] | None = None,
    license: str | None = None,
    description: str | None = None,
    known_sha256: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    progress: Progress | None = None,
    action: str = "import",
) -> InstalledModel:
    """Register a local GGUF (copied, or hardlinked with `link=True`) with a `local` provenance.

    Under a catalog alias's name and tag it must be the catalog's pinned file (else
    IntegrityError): a local file cannot stand in for a catalog model.

    `known_sha256` (file name -> hash) skips re-hashing files the caller has verified;
    `meta` skips reading the GGUF header (both are for fixtures and bundles). Hashing the
    copy is reported to `progress`. The site policy is asked first (`action`: "import" or
    "pull"): the `file` source, then the model's name, digest, licence and signature.
    """
    from sovcli.store.ggufmeta import read_metadata

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"no such file: {path}", hint="Pass the path of a .gguf file.")
    path = path.resolve()
    if source is None:
        enforce_source("file", str(path), action)
    shards = shard_paths(path)
    if meta is None:
        meta = read_metadata(shards)
    name = validate_name(name or default_name(path))
    tag = validate_tag(tag or meta.get("quantization") or quant_from_filename(path.name) or "local")
    known = dict(known_sha256 or {})
    license = license if license is not None else _license_from(meta)
    checked = _policy_check(name, tag, shards, known, license, action)
    files = [
        FileToInstall(
            src=p,
            relpath=p.name,
            sha256=known.get(p.name) or checked.get(p.name),
            trusted=p.name in known,  # a hash taken for the policy is checked again on copy
            mode="link" if link else "copy",
        )
        for p in shards
    ]
    record = source or {"kind": "local", "path": str(path), "files": [p.name for p in shards]}
    spec = InstallSpec(
        name=name,
        tag=tag,
        files=files,
        source=record,
        gguf_file=shards[0].name,
        license=license,
        description=description,
        meta=meta,
        pinned_sha256=load_catalog().pinned_sha256(name, tag),
    )
    return install_locked(spec, progress)


def _policy_check(
    name: str,
    tag: str,
    shards: list[Path],
    known: dict[str, str],
    license: str | None,
    action: str,
) -> dict[str, str]:
    """Under a site policy: hash the files (unless known) and ask the policy about them
    before anything is copied; returns the hashes taken. No policy: nothing is hashed."""
    if current_policy() is None:
        return {}
    hashes = {p.name: known.get(p.name) or sha256_file(p) for p in shards}
    manifest = {
        "name": name,
        "tag": tag,
        "gguf": shards[0].name,
        "license": license,
        "files": [{"path": n, "sha256": h} for n, h in hashes.items()],
    }
    enforce_files(None, manifest, action)
    return hashes


def _license_from(meta: dict[str, Any]) -> str | None:
    value = meta.get("metadata", {}).get("general.license")
    return value if isinstance(value, str) else None
