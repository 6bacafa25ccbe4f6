"""A local server that speaks the Hugging Face hub protocol as `huggingface_hub` uses it.

Other test areas import it as a helper (run pytest as `python -m pytest` from the repo root,
as the README and .ci/run do, so that `tests` is importable)::

    from tests.store.hub_server import HubServer

    with HubServer() as hub:
        hub.add_repo("org/model-GGUF", {"model-Q4_K_M.gguf": gguf_path, "README.md": b"hi"})
        hub.add_folder("org/checkpoint", Path("some/checkpoint/dir"))
        monkeypatch.setenv("HF_ENDPOINT", hub.url)

What it serves (threaded `http.server` on 127.0.0.1, random port):
- `HEAD|GET /{repo}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag` and, for LFS files,
  `X-Linked-Etag` (the sha256) and `X-Linked-Size`; `Range: bytes=N-` gives 206 (resume).
- `GET /api/models/{repo}[/revision/{revision}]` (`sha`, `siblings[]` with `rfilename`, and
  `size` + `lfs.sha256` when `?blobs=true`) and `GET /api/models/{repo}/tree/{revision}`.
- 404 with `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`; 401 / 403 for
  gated repos (`X-Error-Code: GatedRepo`) and for a server-wide token requirement.

Switches (set attributes while it runs): `cut_once[path] = nbytes` closes the connection after
`nbytes` of the next full GET of `path`; `corrupt.add(path)` flips one served byte (hashes stay
those of the good file); `require_token = "tok"`; `gated[repo] = "tok"`; `fail_status[path] =
code`; `throttle = bytes_per_second`. `requests` logs `(method, path, headers)` of every
request. It also answers absolute-form requests, so it can stand in as an HTTP proxy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")


@dataclass
class _File:
    path: str
    source: bytes | Path
    size: int
    sha256: str
    git_oid: str
    lfs: bool

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with self.source.open("rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


@dataclass
class _Repo:
    repo_id: str
    files: dict[str, _File] = field(default_factory=dict)
    revisions: dict[str, str] = field(default_factory=dict)  # name -> commit


def _describe(path: str, source: bytes | Path) -> _File:
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        size = len(source)
        digest.update(source)
        head = source
    else:
        source = Path(source)
        size = source.stat().st_size
        with source.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        head = b""
    git = hashlib.sha1(
        b"blob %d\0" % size + (head if isinstance(source, bytes) else b"")
    ).hexdigest()
    lfs = path.lower().endswith(LFS_SUFFIXES) or size > 100_000
    return _File(
        path=path, source=source, size=size, sha256=digest.hexdigest(), git_oid=git, lfs=lfs
    )


class HubServer:
    """A hub look-alike on 127.0.0.1 (see module docstring)."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_once: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.require_token: str | None = None
        self.gated: dict[str, str] = {}
        self.fail_status: dict[str, int] = {}
        self.throttle: int | None = None  # bytes per second for file bodies
        self.cdn_redirect = False  # LFS files answer 302 to a "CDN" on http://localhost:<port>
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------
    def add_repo(
        self, repo_id: str, files: dict[str, bytes | Path | str], revision: str = "main"
    ) -> str:
        """Add (or extend) a repo; returns the commit sha of `revision`."""
        repo = self.repos.setdefault(repo_id, _Repo(repo_id))
        for path, source in files.items():
            if isinstance(source, str):
                source = source.encode()
            repo.files[path] = _describe(path, source)
        commit = hashlib.sha1(
            json.dumps(sorted((f.path, f.sha256) for f in repo.files.values())).encode()
            + revision.encode()
        ).hexdigest()
        repo.revisions[revision] = commit
        return commit

    def add_folder(self, repo_id: str, folder: Path, revision: str = "main") -> str:
        """Serve every file under `folder` (recursively) as repo `repo_id`."""
        folder = Path(folder)
        files: dict[str, bytes | Path | str] = {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }
        return self.add_repo(repo_id, files, revision=revision)

    def sha256(self, repo_id: str, path: str) -> str:
        """The sha256 the server announces for a file."""
        return self.repos[repo_id].files[path].sha256

    def count(self, method: str, path_part: str) -> int:
        """How many requests with `method` had `path_part` in their path."""
        return sum(1 for m, p, _h in self.requests if m == method and path_part in p)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        """Start serving in a daemon thread."""
        handler = type("_Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
        serve = functools.partial(self._httpd.serve_forever, poll_interval=0.02)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    # -- helpers -----------------------------------------------------------------------------
    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head_only: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head_only)

    def _auth_ok(self, repo_id: str, head_only: bool) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        hub = self.hub
        if hub.require_token is not None and token != hub.require_token:
            self._error(401, None, "Invalid credentials in Authorization header", head_only)
            return False
        if repo_id in hub.gated and token != hub.gated[repo_id]:
            status = 401 if token is None else 403
            self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it.",
                head_only,
            )
            return False
        return True

    def _repo_rev(self, repo_id: str, rev: str, head_only: bool) -> tuple[_Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head_only)
            return None
        if not self._auth_ok(repo_id, head_only):
            return None
        if rev in repo.revisions:
            return repo, repo.revisions[rev]
        if rev in repo.revisions.values():
            return repo, rev
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head_only)
        return None

    # -- routing -------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route(head_only=True)

    def do_GET(self) -> None:
        self._route(head_only=False)

    def _route(self, head_only: bool) -> None:
        split = urlsplit(self.path)  # absolute-form when a client uses us as its HTTP proxy
        path = split.path
        with self.hub._lock:
            self.hub.requests.append((self.command, path, dict(self.headers.items())))
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/") :], parse_qs(split.query), head_only)
        elif path.startswith("/cdn/"):
            repo_id, _, rest = path[len("/cdn/") :].partition("/-/")
            commit, _, file_path = rest.partition("/")
            self._cdn(unquote(repo_id), commit, unquote(file_path), head_only)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            rev, _, file_path = rest.partition("/")
            self._resolve(unquote(repo_id), unquote(rev), unquote(file_path), head_only)
        else:
            self._error(404, None, "Not found", head_only)

    def _api(self, rest: str, query: dict[str, list[str]], head_only: bool) -> None:
        parts = rest.split("/")
        repo_id = "/".join(parts[:2])
        tail = parts[2:]
        if not tail:
            kind, rev, sub = "revision", "main", ""
        elif tail[0] in ("revision", "tree") and len(tail) >= 2:
            kind, rev, sub = tail[0], unquote(tail[1]), "/".join(tail[2:])
        else:
            self._error(404, None, "Not found", head_only)
            return
        found = self._repo_rev(repo_id, rev, head_only)
        if found is None:
            return
        repo, commit = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        if kind == "revision":
            siblings = []
            for f in sorted(repo.files.values(), key=lambda f: f.path):
                entry: dict[str, Any] = {"rfilename": f.path}
                if blobs:
                    entry["size"] = f.size
                    entry["blobId"] = f.git_oid
                    if f.lfs:
                        entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
                siblings.append(entry)
            body = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "gated": repo_id in self.hub.gated and "manual",
                "disabled": False,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
        else:
            prefix = sub.rstrip("/") + "/" if sub else ""
            body = []
            for f in sorted(repo.files.values(), key=lambda f: f.path):
                if not f.path.startswith(prefix):
                    continue
                entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                body.append(entry)
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head_only)

    def _resolve(self, repo_id: str, rev: str, file_path: str, head_only: bool) -> None:
        found = self._repo_rev(repo_id, rev, head_only)
        if found is None:
            return
        repo, commit = found
        f = repo.files.get(file_path)
        if f is None:
            self._error(404, "EntryNotFound", f"{file_path} does not exist on {rev}", head_only)
            return
        hub = self.hub
        if file_path in hub.fail_status:
            self._error(hub.fail_status[file_path], None, "injected failure", head_only)
            return
        if f.lfs and hub.cdn_redirect:
            port = self.server.server_address[1]
            location = f"http://localhost:{port}/cdn/{repo_id}/-/{commit}/{file_path}"
            self._send(
                302,
                b"",
                {
                    "X-Repo-Commit": commit,
                    "Location": location,
                    "ETag": f'"{f.git_oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                },
                head_only,
            )
            return
        self._serve_file(f, commit, head_only)

    def _cdn(self, repo_id: str, commit: str, file_path: str, head_only: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        f = repo.files.get(file_path) if repo else None
        if f is None:
            self._error(404, None, "no such blob", head_only)
            return
        self._serve_file(f, commit, head_only)

    def _serve_file(self, f: _File, commit: str, head_only: bool) -> None:
        hub = self.hub
        file_path = f.path
        headers = {
            "X-Repo-Commit": commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": f'"{f.sha256 if f.lfs else f.git_oid}"',
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        start, end = 0, f.size
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first or 0)
            end = int(last) + 1 if last else f.size
            if start >= f.size:
                self._send(416, b"", {"Content-Range": f"bytes */{f.size}"}, head_only)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        if head_only:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            return
        with hub._lock:
            cut = hub.cut_once.pop(file_path, None) if status == 200 else None
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        pos = start
        sent = 0
        flip_at = f.size // 2
        while pos < end:
            chunk = f.read(pos, min(end, pos + (1 << 20)))
            if file_path in hub.corrupt and pos <= flip_at < pos + len(chunk):
                i = flip_at - pos
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[: max(cut - sent, 0)])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            try:
                if hub.throttle:
                    for i in range(0, len(chunk), 65536):
                        self.wfile.write(chunk[i : i + 65536])
                        time.sleep(65536 / hub.throttle)
                else:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            pos += len(chunk)
            sent += len(chunk)
