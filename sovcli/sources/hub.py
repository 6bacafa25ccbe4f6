"""Hugging Face hub source (or a site mirror through HF_ENDPOINT / --endpoint).

Everything goes through the `huggingface_hub` client: repo listing (`HfApi.model_info`),
file metadata (`get_hf_file_metadata`: commit, LFS sha256, size) and the download itself
(`http_get`, which resumes a cut connection with a Range request). Downloads land in a
`.part` file under `<home>/partial/` that survives an interrupted pull, so the next pull
resumes from where it stopped. Every file is hashed and compared with the catalog pin or
the hub's own LFS hash before it is registered.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovcli.catalog import Source
from sovcli.errors import (
    AuthError,
    ConversionError,
    DiskFullError,
    IntegrityError,
    ModelNotFoundError,
    NetworkError,
    SovcliError,
    UsageError,
)
from sovcli.sources.base import Fetched, ensure_free_space, is_disk_full
from sovcli.sources.progress import PullProgress, status
from sovcli.store.hashing import sha256_file
from sovcli.store.layout import partial_model_dir
from sovcli.store.names import quant_from_filename, shard_info, validate_file_name
from sovcli.store.registry import FileToInstall, get_installed

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Files a safetensors checkpoint needs for conversion.
_CHECKPOINT_PATTERNS = (
    re.compile(r"^[^/]*\.safetensors$"),
    re.compile(r"^[^/]*\.safetensors\.index\.json$"),
    re.compile(r"^config\.json$"),
    re.compile(r"^generation_config\.json$"),
    re.compile(r"^tokenizer(_config)?\.json$"),
    re.compile(r"^tokenizer\.model$"),
    re.compile(r"^special_tokens_map\.json$"),
    re.compile(r"^added_tokens\.json$"),
    re.compile(r"^vocab\.json$"),
    re.compile(r"^merges\.txt$"),
    re.compile(r"^chat_template\.(json|jinja)$"),
)


def _hub_client() -> None:
    """Import huggingface_hub with its telemetry off (sovcli sends none, whatever the env says).

    With telemetry on, the client fetches `/api/agent-harnesses` from its import-time endpoint
    to decorate its user agent: a request nobody asked for, possibly to huggingface.co even
    when --endpoint names a mirror.
    """
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True
    logger = logging.getLogger("huggingface_hub.file_download")
    if not any(isinstance(f, _ResumeMessage) for f in logger.filters):
        logger.addFilter(_ResumeMessage())


class _ResumeMessage(logging.Filter):
    """Shorten the hub client's multi-line resume warning to one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "Trying to resume download" in text:
            detail = text.split(": ", 1)[-1].split("\n", 1)[0]
            record.msg = "connection interrupted (%s); resuming with a Range request"
            record.args = (detail[:120],)
        elif "Max retries exceeded" in text:
            record.msg, record.args = "download failed after several resume attempts", ()
        return True


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint(endpoint: str | None) -> str:
    """The hub: --endpoint, else $HF_ENDPOINT, else huggingface.co (read at call time)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def map_hub_error(
    exc: BaseException, *, repo: str, endpoint: str, revision: str, file: str | None = None
) -> SovcliError:
    """Turn a huggingface_hub / transport exception into a one-line SovcliError."""
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
        return _offline_error(repo)
    if isinstance(exc, hf_errors.HfHubHTTPError):
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


def _offline_error(name: str) -> NetworkError:
    return NetworkError(
        f"{name} is not in the store and HF_HUB_OFFLINE=1 forbids downloading it",
        hint="Unset HF_HUB_OFFLINE (or set HF_ENDPOINT to your site's mirror), import the file "
        "with `sovcli import PATH.gguf`, or pull an air-gap bundle.",
    )


@dataclass
class _RemoteFile:
    path: str  # in the repo
    size: int | None = None
    sha256: str | None = None  # expected (pin or LFS)
    sha256_from: str = "none"


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2  # type: ignore[import-not-found]
    from huggingface_hub import errors as hf_errors

    return (
        hf_errors.HfHubHTTPError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.EntryNotFoundError,
        httpx2.HTTPError,
        httpx2.StreamError,
        ConnectionError,
        TimeoutError,
    )


def _list_repo(
    repo: str, revision: str, endpoint: str
) -> tuple[str | None, dict[str, _RemoteFile], bool | None]:
    """`(commit, {path: _RemoteFile}, gated)` of a repo at a revision."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint, token=_token()).model_info(
            repo, revision=revision, files_metadata=True
        )
    except _transport_errors() as exc:
        raise map_hub_error(exc, repo=repo, endpoint=endpoint, revision=revision) from exc
    files: dict[str, _RemoteFile] = {}
    for sib in info.siblings or []:
        lfs = getattr(sib, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files[sib.rfilename] = _RemoteFile(
            path=sib.rfilename,
            size=getattr(sib, "size", None),
            sha256=sha if sha and _SHA256.match(sha) else None,
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
    elif DEFAULT_QUANT in groups:
        chosen = DEFAULT_QUANT
    elif len(groups) == 1:
        chosen = next(iter(groups))
    else:
        raise UsageError(
            f"{repo} holds several GGUF quantizations and no {DEFAULT_QUANT}; say which one",
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
    progress: PullProgress,
) -> tuple[Path, str, dict[str, Any]]:
    """Download one file (resuming a `.part`), verify it; returns (path, sha256, metadata)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    token = _token()
    url = hf_hub_url(repo, remote.path, revision=commit, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    except _transport_errors() as exc:
        raise map_hub_error(
            exc, repo=repo, endpoint=endpoint, revision=commit, file=remote.path
        ) from exc
    etag = (meta.etag or "").strip('"')
    if remote.sha256 is None and _SHA256.match(etag):
        remote.sha256, remote.sha256_from = etag, "hub-lfs"
    size = meta.size if meta.size is not None else remote.size
    name = remote.path.rsplit("/", 1)[-1]
    final = workdir / name
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
    headers = build_hf_headers(token=token)
    download_url = _download_url(url, meta, headers)
    streamed: str | None = None
    try:
        if size is None or resume < size:
            with part.open("ab") as raw:
                fh = _HashingWriter(raw, part, resume)
                http_get(
                    download_url,
                    fh,  # type: ignore[arg-type]
                    resume_size=resume,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=name,
                    tqdm_class=progress.tqdm_class(name),
                )
                streamed = fh.hexdigest()
    except KeyboardInterrupt:
        raise  # keep the .part: the next pull resumes from here
    except OSError as exc:
        if is_disk_full(exc):
            part.unlink(missing_ok=True)
            raise DiskFullError(
                f"disk full while downloading {name}; the partial file was removed"
            ) from exc
        if "Consistency check failed" in str(exc):
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"{name}: the hub sent a different number of bytes than announced",
                hint="Pull again.",
            ) from exc
        raise map_hub_error(
            exc, repo=repo, endpoint=endpoint, revision=commit, file=remote.path
        ) from exc
    except _transport_errors() as exc:
        raise map_hub_error(
            exc, repo=repo, endpoint=endpoint, revision=commit, file=remote.path
        ) from exc
    digest = streamed or sha256_file(part)
    if remote.sha256 and digest != remote.sha256:
        part.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 mismatch for {name}: got {digest}, expected {remote.sha256} "
            f"({'catalog pin' if remote.sha256_from == 'catalog' else 'the hub LFS hash'})",
            hint="The download was corrupted or tampered with; the partial file was deleted.",
        )
    os.replace(part, final)
    stamp.unlink(missing_ok=True)
    return final, digest, {"commit": meta.commit_hash, "etag": etag, "size": size}


class _HashingWriter:
    """A file wrapper that hashes what the hub client writes, so no second pass is needed.

    Bytes already in a resumed `.part` are hashed first. If the client rewinds (a server that
    ignored the Range request), the running hash is abandoned and the file is re-hashed.
    """

    def __init__(self, raw: Any, path: Path, resume: int) -> None:
        import hashlib

        self._raw = raw
        self._digest: Any = hashlib.sha256()
        self._written = 0
        if resume:
            with path.open("rb") as existing:
                while block := existing.read(1 << 20):
                    self._digest.update(block)
        self._expected = resume

    def write(self, data: bytes) -> int:
        if self._digest is not None:
            self._digest.update(data)
        self._expected += len(data)
        return self._raw.write(data)

    def seek(self, *args: Any) -> int:
        self._digest = None
        return self._raw.seek(*args)

    def truncate(self, *args: Any) -> int:
        self._digest = None
        return self._raw.truncate(*args)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def hexdigest(self) -> str | None:
        """The sha256 of the whole file, or None when it must be recomputed."""
        self._raw.flush()
        if self._digest is None or self._raw.tell() != self._expected:
            return None
        return self._digest.hexdigest()


def _download_url(url: str, meta: Any, headers: dict[str, str]) -> str:
    """Where to GET the bytes, as hf_hub_download decides it (and when to drop the token).

    Xet-backed files are fetched from the resolve URL (the client follows the redirect);
    an LFS file redirected to a CDN host is fetched from there without the Authorization header.
    """
    location = getattr(meta, "location", None) or url
    if getattr(meta, "xet_file_data", None) is not None or location == url:
        return url
    try:
        from huggingface_hub.file_download import _is_same_or_hub_host

        same = _is_same_or_hub_host(url, location)
    except ImportError:
        from urllib.parse import urlsplit

        same = urlsplit(url).netloc == urlsplit(location).netloc
    if not same:
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    return location


def fetch_hub(
    src: Source,
    *,
    name: str,
    quant: str | None,
    revision: str | None,
    endpoint: str | None,
    progress: PullProgress,
    quiet: bool,
    keep_source: bool = False,
    force: bool = False,
) -> Fetched:
    """Fetch a GGUF (or a safetensors checkpoint to convert) from a hub repo."""
    repo = src.repo or ""
    _hub_client()
    if _offline():
        raise _offline_error(f"{name}" + (f":{quant}" if quant else ""))
    ep = hub_endpoint(endpoint)
    rev = revision or src.revision or "main"
    checkpoint = functools.partial(
        _fetch_checkpoint,
        src,
        name=name,
        quant=quant,
        rev=rev,
        endpoint=ep,
        progress=progress,
        quiet=quiet,
        keep_source=keep_source,
        force=force,
    )
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
        with status(f"Listing {repo}@{rev} on {ep}", quiet):
            commit, listing, gated = _list_repo(repo, rev, ep)
        groups = _group_ggufs(listing)
        if not groups and _is_checkpoint(listing):
            return checkpoint(listed=(commit, listing, gated))
        tag, paths = _choose(repo, groups, quant)
    if not force and get_installed(name, tag) is not None:
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
    *,
    name: str,
    quant: str | None,
    rev: str,
    endpoint: str,
    progress: PullProgress,
    quiet: bool,
    keep_source: bool,
    force: bool,
    listed: tuple[str | None, dict[str, _RemoteFile], bool | None] | None = None,
) -> Fetched:
    """Download a safetensors checkpoint (verified), convert it to GGUF, hand back the GGUF.

    `listed` is the repo listing when the caller already has it.
    """
    repo = src.repo or ""
    tag = quant or src.quant or DEFAULT_QUANT
    if not force and get_installed(name, tag) is not None:
        return Fetched(files=[], source={}, tag=tag)
    if listed is None:
        with status(f"Listing {repo}@{rev} on {endpoint}", quiet):
            listed = _list_repo(repo, rev, endpoint)
    commit, listing, gated = listed
    wanted = [p for p in sorted(listing) if any(pat.match(p) for pat in _CHECKPOINT_PATTERNS)]
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
    progress.finish()  # the converter draws its own progress
    record = convert_checkpoint_to_gguf(
        ckpt_dir, out, quant=tag, keep_intermediate=keep_source, quiet=quiet, source_repo=repo
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
    if keep_source:
        source["checkpoint_kept_at"] = str(ckpt_dir)
    else:
        fetched.cleanup.append(ckpt_dir)
    return fetched
