"""Streaming one file over HTTP into a resumable `.part` file, hashed as it grows.

- A `.part` left by an interrupted pull is kept: the next request asks only for the rest
  (`Range: bytes=N-`); a server that ignores the Range gets the file from the start again.
- A connection cut in the middle is resumed the same way, a few times, within one pull.
- Redirects are followed here, hop by hop, so the Authorization header goes only to the
  origin the token is meant for (the hub), never to a CDN host a redirect points to.
- Proxies come from the environment (HTTPS_PROXY, NO_PROXY), as for the hub client, and
  certificates from the system's CA store.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from sovcli.errors import NetworkError
from sovcli.progress import Progress, ProgressTask
from sovcli.sources.base import one_line
from sovcli.store.hashing import BLOCK, hash_into

MAX_REDIRECTS = 10
MAX_STALLED_RETRIES = 5
"""Consecutive attempts that bring no new byte before a download gives up."""
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TIMEOUT = httpx.Timeout(60.0, connect=15.0)


class TransientHTTPError(Exception):
    """A status worth retrying (429, 5xx): the download resumes after a pause."""


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port when none is given."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class PartFile:
    """The `.part` file of one download, opened for appending, with a running sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest: Any = hashlib.sha256()
        self.size = hash_into(self._digest, path) if path.exists() else 0
        self._fh = path.open("ab")

    def write(self, data: bytes) -> int:
        """Append `data` (and hash it)."""
        self._fh.write(data)
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    def restart(self) -> None:
        """Drop what was downloaded (the server sent the whole file again)."""
        self._fh.seek(0)
        self._fh.truncate()
        self._digest = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        """The sha256 of everything in the file so far."""
        return self._digest.hexdigest()

    def close(self) -> None:
        """Flush and close (the file stays, for a later resume)."""
        self._fh.close()

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ssl_context() -> ssl.SSLContext:
    """The system's CA certificates (so a site mirror's internal CA works), else certifi's."""
    context = ssl.create_default_context()  # also reads SSL_CERT_FILE / SSL_CERT_DIR
    if not context.cert_store_stats().get("x509_ca"):
        import certifi

        context.load_verify_locations(certifi.where())
    return context


def client() -> httpx.Client:
    """An HTTP client that follows no redirect by itself (`http_get` does, hop by hop)."""
    return httpx.Client(
        timeout=TIMEOUT, follow_redirects=False, trust_env=True, verify=_ssl_context()
    )


def http_get(
    url: str,
    part: PartFile,
    *,
    client: httpx.Client,
    headers: dict[str, str],
    auth_origin: tuple[str, str, int],
    task: ProgressTask,
) -> None:
    """GET the bytes of `url` that `part` lacks and append them to it.

    `headers` may hold the token: it is sent only to hosts of `auth_origin`. Raises
    httpx.HTTPStatusError for a refusal, TransientHTTPError or httpx.TransportError for
    what a retry may fix.
    """
    for _ in range(MAX_REDIRECTS):
        sent = dict(headers)
        if origin(url) != auth_origin:
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
        if part.size:
            sent["Range"] = f"bytes={part.size}-"
        with client.stream("GET", url, headers=sent) as response:
            if response.is_redirect and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code == 416 and part.size:
                part.restart()  # our .part is longer than the file: start again
                task.update(completed=0)
                continue
            if response.status_code in TRANSIENT_STATUS:
                raise TransientHTTPError(f"HTTP {response.status_code}")
            response.raise_for_status()
            if part.size and response.status_code != 206:
                part.restart()  # the server ignored the Range: it sends the whole file
                task.update(completed=0)
            for chunk in response.iter_bytes(BLOCK):
                part.write(chunk)
                task.advance(len(chunk))
        return
    raise NetworkError(f"too many redirects while downloading {url}")


def download(
    url: str,
    part_path: Path,
    *,
    size: int | None,
    headers: dict[str, str],
    auth_origin: tuple[str, str, int],
    label: str,
    progress: Progress,
    first_url: str | None = None,
) -> tuple[str, int]:
    """Complete `part_path` from `url`; returns (sha256 of the whole file, its size).

    `first_url` (e.g. a CDN location the hub already named) is tried first; a retry after
    a cut connection starts again from `url`.
    """
    with PartFile(part_path) as part, client() as http:
        task = progress.task(label, size, unit="B", completed=part.size)
        start, stalled = first_url or url, 0
        while size is None or part.size < size:
            before = part.size
            try:
                http_get(
                    start, part, client=http, headers=headers, auth_origin=auth_origin, task=task
                )
                break
            except (httpx.TransportError, TransientHTTPError) as exc:
                stalled = 0 if part.size > before else stalled + 1
                if stalled > MAX_STALLED_RETRIES:
                    raise
                progress.note(
                    f"{label}: connection interrupted ({one_line(exc)}); "
                    f"resuming at {part.size:,} bytes with a Range request"
                )
                time.sleep(min(stalled, 5))
                start = url
        task.close()
        return part.hexdigest(), part.size
