"""Hugging Face hub source (or a site mirror through HF_ENDPOINT / --endpoint).

Only the public API of `huggingface_hub` is used: `HfApi.model_info` lists a repo (commit,
files, sizes, LFS sha256), `get_hf_file_metadata` gives a file's commit, ETag, size and
where its bytes are (`hf_hub_url` builds the URL, `huggingface_hub.utils.build_hf_headers`
the headers) and `huggingface_hub.errors` says what went wrong. The bytes themselves are
streamed by `sources.transfer` into a `.part` file under `<home>/partial/` that survives an
interrupted pull (the next pull resumes it with a Range request); the token goes to the hub
only, never to a CDN host it redirects to. Every file is hashed while it streams and
compared with the catalog pin or the hub's LFS hash before it is registered.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sovcli import settings
from sovcli.errors import (
    AuthError,
    ConversionError,
    DiskFullError,
    IntegrityError,
    ModelNotFoundError,
    NetworkError,
    SovcliError,
    StoreError,
    UsageError,
)
from sovcli.progress import Progress
from sovcli.sources import transfer
from sovcli.sources.base import (
    Fetched,
    FetchOptions,
    ensure_free_space,
    is_disk_full,
    offline_error,
    refuse_when_offline,
)
from sovcli.sources.catalog import Source
from sovcli.store.layout import partial_model_dir
from sovcli.store.names import (
    DEFAULT_HUB_QUANT,
    quant_from_filename,
    shard_info,
    validate_file_name,
)
from sovcli.store.registry import FileToInstall, get_intact

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` would accept a trailing newline
# Files a safetensors checkpoint needs for conversion (each pattern matched whole).
_CHECKPOINT_PATTERNS = (
    re.compile(r"[^/]*\.safetensors"),
    re.compile(r"[^/]*\.safetensors\.index\.json"),
    re.compile(r"config\.json"),
    re.compile(r"generation_config\.json"),
    re.compile(r"tokenizer(_config)?\.json"),
    re.compile(r"tokenizer\.model"),
    re.compile(r"special_tokens_map\.json"),
    re.compile(r"added_tokens\.json"),
    re.compile(r"vocab\.json"),
    re.compile(r"merges\.txt"),
    re.compile(r"chat_template\.(json|jinja)"),
)
# Libraries whose exceptions mean "the hub or the network said no" (not a bug in sovcli).
_REMOTE_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")

T = TypeVar("T")


def _hub_client() -> None:
    """Import huggingface_hub with its telemetry off (sovcli sends none, whatever the env says).

    With telemetry on, the client fetches `/api/agent-harnesses` from its import-time endpoint
    to decorate its user agent: a request nobody asked for, possibly to huggingface.co even
    when --endpoint names a mirror.
    """
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True


def hub_endpoint(endpoint: str | None) -> str:
    """The hub: --endpoint, else $HF_ENDPOINT, else huggingface.co (read at call time)."""
    return (endpoint or settings.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def map_hub_error(
    exc: BaseException, *, repo: str, endpoint: str, revision: str, file: str | None = None
) -> SovcliError:
    """Turn a huggingface_hub / transport exception into a one-line SovcliError."""
    import httpx
    from huggingface_hub import errors as hf_errors

    status_code = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.GatedRepoError):
        return AuthError(f"{repo} is gated: access refused ({status_code})")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        if status_code == 401:
            return AuthError(
                f"{repo}: not found or needs a token (401 from {endpoint})",
                hint="Check the repo name; if it is private or gated, accept its licence on the "
                "hub and set HF_TOKEN to a token that may read it.",
            )
        return ModelNotFoundError(
            f"repository {repo} not found on {endpoint}",
            hint="Check the name (org/repo) or the catalog entry.",
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return ModelNotFoundError(
            f"revision '{revision}' not found in {repo}",
            hint="Check --revision (a branch, tag or commit).",
        )
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return ModelNotFoundError(
            f"{file or 'file'} not found in {repo}@{revision}",
            hint=f"List the repo's files on the hub, or pull hf:{repo} to choose a quant.",
        )
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return offline_error(repo)
    if isinstance(exc, (hf_errors.HfHubHTTPError, httpx.HTTPStatusError)):
        if status_code in (401, 403):
            return AuthError(f"{repo}: access refused ({status_code} from {endpoint})")
        if status_code == 404:
            return ModelNotFoundError(f"{file or repo} not found on {endpoint} (404)")
        return NetworkError(f"the hub at {endpoint} answered {status_code} for {file or repo}")
    if is_disk_full(exc):
        return DiskFullError(
            f"disk full while downloading {file or repo}; the partial file was removed"
        )
    reason = type(exc).__name__
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return NetworkError(
        f"cannot reach the hub at {endpoint} ({reason}: {first_line})",
        hint="Check the network or proxy (HTTPS_PROXY), set HF_ENDPOINT (or --endpoint) to your "
        "site's hub mirror, or work offline with models already in the store (HF_HUB_OFFLINE=1) "
        "or an air-gap bundle (`sovcli pull FILE.tar`).",
    )


def _is_remote_error(exc: BaseException) -> bool:
    """True for an error of the hub, the network or the HTTP libraries (not a sovcli bug)."""
    if isinstance(exc, (OSError, transfer.TransientHTTPError)):
        return True
    return any(k.__module__.split(".")[0].startswith(_REMOTE_MODULES) for k in type(exc).__mro__)


def _call(
    what: Callable[[], T], *, repo: str, endpoint: str, revision: str, file: str | None = None
) -> T:
    """`what()`, with hub and network errors turned into SovcliErrors."""
    try:
        return what()
    except SovcliError:
        raise
    except Exception as exc:
        if not _is_remote_error(exc):
            raise
        raise map_hub_error(
            exc, repo=repo, endpoint=endpoint, revision=revision, file=file
        ) from exc


@dataclass
class _RemoteFile:
    path: str  # in the repo
    size: int | None = None
    sha256: str | None = None  # expected (pin or LFS)
    sha256_from: str = "none"


def _list_repo(
    repo: str, revision: str, endpoint: str
) -> tuple[str | None, dict[str, _RemoteFile], bool | None]:
    """`(commit, {path: _RemoteFile}, gated)` of a repo at a revision."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=settings.hub_token())
    info = _call(
        lambda: api.model_info(repo, revision=revision, files_metadata=True),
        repo=repo,
        endpoint=endpoint,
        revision=revision,
    )
    files: dict[str, _RemoteFile] = {}
    for sib in info.siblings or []:
        lfs = getattr(sib, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files[sib.rfilename] = _RemoteFile(
            path=sib.rfilename,
            size=getattr(sib, "size", None),
            sha256=sha if sha and _SHA256.fullmatch(sha) else None,
            sha256_from="hub-lfs" if sha else "none",
        )
    gated = getattr(info, "gated", None)
    return info.sha, files, (bool(gated) if gated is not None else None)


def _group_ggufs(files: dict[str, _RemoteFile]) -> dict[str, list[list[str]]]:
    """quant -> list of models (each a list of file paths, shards in order)."""
    models: dict[tuple[str, int], list[str]] = {}
    for path in sorted(files):
        low = path.lower()
        if not low.endswith(".gguf") or "mmproj" in low.rsplit("/", 1)[-1]:
            continue
        info = shard_info(path)
        if info:
            stem, _idx, total = info
            folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
            models.setdefault((folder + stem, total), []).append(path)
        else:
            models[(path, 0)] = [path]
    groups: dict[str, list[list[str]]] = {}
    for (_key, _total), paths in models.items():
        quant = quant_from_filename(paths[0]) or "default"
        groups.setdefault(quant, []).append(sorted(paths))
    return groups


def _is_checkpoint(listing: dict[str, _RemoteFile]) -> bool:
    """True when a repo listing holds a Hugging Face safetensors checkpoint."""
    return "config.json" in listing and any(p.endswith(".safetensors") for p in listing)


def _choose(
    repo: str, groups: dict[str, list[list[str]]], quant: str | None
) -> tuple[str, list[str]]:
    if not groups:
        raise ModelNotFoundError(
            f"{repo} holds neither a GGUF file nor a safetensors checkpoint",
            hint="Check the repo name, or convert a local checkpoint with `sovcli convert`.",
        )
    if quant is not None:
        if quant not in groups:
            raise ModelNotFoundError(
                f"{repo} has no {quant} GGUF",
                hint="Available: " + ", ".join(f"hf:{repo}:{q}" for q in sorted(groups)),
            )
        chosen = quant
    elif DEFAULT_HUB_QUANT in groups:
        chosen = DEFAULT_HUB_QUANT
    elif len(groups) == 1:
        chosen = next(iter(groups))
    else:
        raise UsageError(
            f"{repo} holds several GGUF quantizations and no {DEFAULT_HUB_QUANT}; say which one",
            hint="Choose one of: " + ", ".join(f"hf:{repo}:{q}" for q in sorted(groups)),
        )
    models = groups[chosen]
    if len(models) > 1:
        raise UsageError(
            f"{repo} holds {len(models)} different {chosen} GGUF models; say which file",
            hint="Choose one of: " + ", ".join(f"hf:{repo}/{m[0]}" for m in models),
        )
    return chosen, models[0]


def _shards_of(first: str) -> list[str]:
    info = shard_info(first)
    if info is None:
        return [first]
    stem, index, total = info
    if index != 1:
        raise UsageError(f"{first} is shard {index} of {total}; name the first shard")
    folder = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
    base_stem = stem.rsplit("/", 1)[-1]
    return [f"{folder}{base_stem}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def _download(
    repo: str,
    remote: _RemoteFile,
    *,
    commit: str,
    endpoint: str,
    workdir: Path,
    progress: Progress,
) -> tuple[Path, str, dict[str, Any]]:
    """Download one file (resuming a `.part`), verify it; returns (path, sha256, metadata)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    token = settings.hub_token()
    url = hf_hub_url(repo, remote.path, revision=commit, endpoint=endpoint)
    call = functools.partial(_call, repo=repo, endpoint=endpoint, revision=commit, file=remote.path)
    meta = call(lambda: get_hf_file_metadata(url, token=token))
    etag = (meta.etag or "").strip('"')
    if remote.sha256 is None and _SHA256.fullmatch(etag):
        remote.sha256, remote.sha256_from = etag, "hub-lfs"
    size = meta.size if meta.size is not None else remote.size
    name = remote.path.rsplit("/", 1)[-1]
    part = _prepare_part(workdir, name, etag, size)
    try:
        digest, _got = transfer.download(
            url,
            part,
            size=size,
            headers=build_hf_headers(token=token),
            auth_origin=transfer.origin(endpoint),
            label=f"download {name}",
            progress=progress,
            first_url=getattr(meta, "location", None) or url,
        )
    except OSError as exc:  # writing the .part (the transfer's network errors are not OSErrors)
        if is_disk_full(exc):
            part.unlink(missing_ok=True)
            raise DiskFullError(
                f"disk full while downloading {name}; the partial file was removed"
            ) from exc
        raise StoreError(f"cannot write {part}: {exc.strerror or exc}") from exc
    except SovcliError:
        raise
    except Exception as exc:  # the .part is kept (also on Ctrl-C): the next pull resumes it
        if not _is_remote_error(exc):
            raise
        raise map_hub_error(
            exc, repo=repo, endpoint=endpoint, revision=commit, file=remote.path
        ) from exc
    _check_download(part, digest, size, remote)
    final = workdir / name
    os.replace(part, final)
    (workdir / (name + ".etag")).unlink(missing_ok=True)
    return final, digest, {"commit": meta.commit_hash, "etag": etag, "size": size}


def _prepare_part(workdir: Path, name: str, etag: str, size: int | None) -> Path:
    """The `.part` to complete: kept when it belongs to the same upstream version (ETag)."""
    part = workdir / (name + ".part")
    stamp = workdir / (name + ".etag")
    workdir.mkdir(parents=True, exist_ok=True)
    if stamp.exists() and stamp.read_text().strip() != etag:
        part.unlink(missing_ok=True)  # a different upstream version: start again
    stamp.write_text(etag)
    resume = part.stat().st_size if part.exists() else 0
    if size is not None and resume > size:
        part.unlink()
        resume = 0
    if size is not None:
        ensure_free_space(workdir, size - resume, name)
    return part


def _check_download(part: Path, digest: str, size: int | None, remote: _RemoteFile) -> None:
    """The downloaded bytes are the announced ones: size, then sha256 (pin or LFS hash)."""
    name = part.name.removesuffix(".part")
    stamp = part.with_name(name + ".etag")
    if size is not None and part.stat().st_size != size:
        part.unlink(missing_ok=True)
        raise IntegrityError(
            f"{name}: the hub sent a different number of bytes than announced",
            hint="Pull again.",
        )
    if remote.sha256 and digest != remote.sha256:
        part.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 mismatch for {name}: got {digest}, expected {remote.sha256} "
            f"({'catalog pin' if remote.sha256_from == 'catalog' else 'the hub LFS hash'})",
            hint="The download was corrupted or tampered with; the partial file was deleted.",
        )


def fetch_hub(src: Source, name: str, quant: str | None, options: FetchOptions) -> Fetched:
    """Fetch a GGUF (or a safetensors checkpoint to convert) from a hub repo."""
    repo = src.repo or ""
    _hub_client()
    refuse_when_offline(f"{name}" + (f":{quant}" if quant else ""))
    ep = hub_endpoint(options.endpoint)
    rev = options.revision or src.revision or "main"
    progress = options.progress
    checkpoint = functools.partial(_fetch_checkpoint, src, name, quant, rev, ep, options)
    if src.format == "safetensors":
        return checkpoint()
    listing: dict[str, _RemoteFile] = {}
    gated: bool | None = None
    if src.file:
        validate_file_name(src.file)
        paths = _shards_of(src.file)
        tag = quant or src.quant or quant_from_filename(src.file) or "default"
        commit: str | None = None
    else:
        progress.note(f"listing {repo}@{rev} on {ep}")
        commit, listing, gated = _list_repo(repo, rev, ep)
        groups = _group_ggufs(listing)
        if not groups and _is_checkpoint(listing):
            return checkpoint(listed=(commit, listing, gated))
        tag, paths = _choose(repo, groups, quant)
    if not options.force and get_intact(name, tag) is not None:
        return Fetched(files=[], source={}, tag=tag)
    remotes = [listing.get(p) or _RemoteFile(path=p) for p in paths]
    if src.sha256 and len(remotes) == 1:
        remotes[0].sha256, remotes[0].sha256_from = src.sha256, "catalog"
    known = sum(r.size or 0 for r in remotes)
    workdir = partial_model_dir(name, tag)
    if known:
        ensure_free_space(workdir, known, f"{repo} {tag}")
    files: list[FileToInstall] = []
    records = []
    resolved_commit = commit or rev
    for remote in remotes:
        path, digest, meta = _download(
            repo, remote, commit=resolved_commit, endpoint=ep, workdir=workdir, progress=progress
        )
        if commit is None and meta.get("commit"):
            commit = resolved_commit = meta["commit"]
        files.append(FileToInstall(src=path, relpath=path.name, sha256=digest, trusted=True))
        records.append({"path": remote.path, "sha256_from": remote.sha256_from})
    source = {
        "kind": "hf",
        "repo": repo,
        "revision": rev,
        "commit": commit,
        "endpoint": ep,
        "files": [r["path"] for r in records],
        "sha256_verified_against": sorted({r["sha256_from"] for r in records}),
        "gated": gated,
    }
    return Fetched(files=files, source=source, tag=tag, gguf_file=files[0].relpath)


def _fetch_checkpoint(
    src: Source,
    name: str,
    quant: str | None,
    rev: str,
    endpoint: str,
    options: FetchOptions,
    listed: tuple[str | None, dict[str, _RemoteFile], bool | None] | None = None,
) -> Fetched:
    """Download a safetensors checkpoint (verified), convert it to GGUF, hand back the GGUF.

    `listed` is the repo listing when the caller already has it.
    """
    repo = src.repo or ""
    tag = quant or src.quant or DEFAULT_HUB_QUANT
    progress = options.progress
    if not options.force and get_intact(name, tag) is not None:
        return Fetched(files=[], source={}, tag=tag)
    if listed is None:
        progress.note(f"listing {repo}@{rev} on {endpoint}")
        listed = _list_repo(repo, rev, endpoint)
    commit, listing, gated = listed
    wanted = [p for p in sorted(listing) if any(pat.fullmatch(p) for pat in _CHECKPOINT_PATTERNS)]
    if not _is_checkpoint(listing):
        raise ModelNotFoundError(
            f"{repo} is not a safetensors checkpoint (no config.json / *.safetensors)"
        )
    workdir = partial_model_dir(name, tag)
    ckpt_dir = workdir / "checkpoint"
    total = sum(listing[p].size or 0 for p in wanted)
    ensure_free_space(workdir, total * 3, f"{repo} checkpoint and conversion")
    checkpoint_files = []
    for path in wanted:
        local, digest, _meta = _download(
            repo,
            listing[path],
            commit=commit or rev,
            endpoint=endpoint,
            workdir=ckpt_dir,
            progress=progress,
        )
        checkpoint_files.append(
            {
                "path": path,
                "sha256": digest,
                "size": local.stat().st_size,
                "sha256_from": listing[path].sha256_from,
            }
        )
    try:
        from sovcli.convert.pipeline import convert_checkpoint_to_gguf
    except ImportError as exc:
        raise ConversionError(
            f"{repo} is a safetensors checkpoint and the converter is not available ({exc})",
            hint="Install a sovcli with the convert module, or pull a GGUF source instead.",
        ) from exc
    out = workdir / f"{repo.rsplit('/', 1)[-1]}-{tag}.gguf"
    record = convert_checkpoint_to_gguf(
        ckpt_dir,
        out,
        quant=tag,
        keep_intermediate=options.keep_source,
        source_repo=repo,
        progress=progress,
    )
    conversion = dict(record or {})
    conversion.setdefault("checkpoint_files", checkpoint_files)
    source = {
        "kind": "hf",
        "format": "safetensors",
        "gated": gated,
        "repo": repo,
        "revision": rev,
        "commit": commit,
        "endpoint": endpoint,
        "files": [f["path"] for f in checkpoint_files],
    }
    fetched = Fetched(
        files=[FileToInstall(src=out, relpath=out.name)],
        source=source,
        tag=tag,
        gguf_file=out.name,
        conversion=conversion,
    )
    if options.keep_source:
        source["checkpoint_kept_at"] = str(ckpt_dir)
    else:
        fetched.cleanup.append(ckpt_dir)
    return fetched
