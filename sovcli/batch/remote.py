"""`--endpoint URL`: completions on OpenAI-compatible servers (e.g. `sovcli serve` machines).

Stdlib only (urllib). Each endpoint gets `--parallel` requests in flight from its own worker
threads, which pull documents from one shared queue, so faster machines take more documents.
Token counts for chunking are estimated (chars per token); the server's `usage` is recorded.
With a schema, `response_format: {"type": "json_schema", ...}` asks the server to constrain.

A document goes to the named endpoint and nowhere else: proxy variables of the environment
(`http_proxy`, `HTTPS_PROXY`, ...) are ignored, redirects are not followed (they would carry
the API key elsewhere), and an explicit `--proxy` is used only for endpoints that are not on
this machine (a loopback endpoint is always reached directly).
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from sovcli.batch.backends import BackendFailure, Completion, GenerationSettings, PromptJob
from sovcli.batch.chunk import DEFAULT_CHARS_PER_TOKEN, estimate_tokens
from sovcli.errors import NetworkError, UsageError

DEFAULT_REMOTE_CONTEXT = 4096
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 64 << 20  # an answer larger than this is an engine failure, not memory


def _http_url(url: str, what: str, example: str) -> urllib.parse.SplitResult:
    """`url` split, or UsageError unless it is http(s)://host[:port]..."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} '{url}' is not an http(s) URL", hint=f"e.g. {what} {example}")
    return parts


def is_loopback(url: str) -> bool:
    """True when `url` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an error: a redirect would send the document and the key somewhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def open_url(url: str, proxy: str | None = None) -> urllib.request.OpenerDirector:
    """An opener for requests to `url`: direct (never the environment's proxy), no redirects.

    `proxy` (an explicit `--proxy`) is used only when `url` is not a loopback address.
    """
    proxies = {} if proxy is None or is_loopback(url) else {"http": proxy, "https": proxy}
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect())


def normalise_proxy(url: str) -> str:
    """Check a `--proxy` URL (http(s)://host:port)."""
    url = url.strip()
    _http_url(url, "--proxy", "http://proxy.example:3128")
    return url


def normalise_endpoint(url: str) -> str:
    """`http://host:port` or `.../v1` -> the base URL ending in `/v1`, no trailing slash."""
    url = url.strip().rstrip("/")
    _http_url(url, "--endpoint", "http://10.0.0.5:8080")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not url.endswith("/v1"):
        url += "/v1"
    return url


class RemoteBackend:
    """One OpenAI-compatible server; thread-safe (one HTTP request per call)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        context_tokens: int = DEFAULT_REMOTE_CONTEXT,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        retries: int = 2,
        proxy: str | None = None,
    ) -> None:
        self.base = normalise_endpoint(url)
        self.proxy = normalise_proxy(proxy) if proxy else None
        self._opener = open_url(self.base, self.proxy)
        self.label = self.base
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.context_tokens = context_tokens
        self.chars_per_token = chars_per_token
        self.retries = retries
        self.dead = False  # set by the runner when the server stopped answering

    # --- token estimates ----------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Estimated token count (the server's tokenizer is not available here)."""
        return estimate_tokens(text, self.chars_per_token)

    def text_budget(self, render: Callable[[str], str], max_tokens: int) -> int:
        """Estimated tokens of document text that fit next to the template and the answer."""
        overhead = self.count_tokens(render("")) + 32  # chat template markup
        return self.context_tokens - max_tokens - overhead

    # --- HTTP ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def check(self) -> list[str]:
        """GET /v1/models: the model ids the server lists; raises NetworkError if unreachable."""
        request = urllib.request.Request(f"{self.base}/models", headers=self._headers())
        try:
            with self._opener.open(request, timeout=min(self.timeout_s, 10)) as response:
                body = json.loads(_read_bounded(response) or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise NetworkError(
                    f"endpoint {self.base} refused the API key (HTTP {exc.code})",
                    hint="Pass the server's key with --api-key (or SOVCLI_API_KEY).",
                ) from exc
            raise NetworkError(f"endpoint {self.base} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NetworkError(f"endpoint {self.base} is unreachable: {reason}") from exc
        data = body.get("data") if isinstance(body, dict) else None
        return [str(item.get("id")) for item in data or [] if isinstance(item, dict)]

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        delay = 0.5
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                f"{self.base}/chat/completions", data=data, headers=self._headers(), method="POST"
            )
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    return json.loads(_read_bounded(response))
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code in RETRY_STATUSES and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                if exc.code == 400 and "context" in detail.lower():
                    raise BackendFailure(
                        "input", f"does not fit the server's context: {detail}"
                    ) from exc
                kind = "network" if exc.code in RETRY_STATUSES else "engine"
                raise BackendFailure(kind, f"{self.base}: HTTP {exc.code}: {detail}") from exc
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                reason = getattr(exc, "reason", exc)
                raise BackendFailure("network", f"{self.base} unreachable: {reason}") from exc
            except ValueError as exc:
                reason = str(exc) if isinstance(exc, ResponseTooLarge) else "response is not JSON"
                raise BackendFailure("engine", f"{self.base}: {reason}") from exc
        raise BackendFailure("network", f"{self.base}: no answer")  # pragma: no cover

    def complete(self, job: PromptJob, settings: GenerationSettings) -> Completion:
        """One chat completion for `job`."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": job.render(job.text)}],
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            "stream": False,
        }
        if settings.schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "document", "schema": settings.schema, "strict": True},
            }
        started = time.monotonic()
        body = self._post(payload)
        elapsed = time.monotonic() - started
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendFailure("engine", f"{self.base}: unexpected response shape") from exc
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=str(finish),
            seconds=elapsed,
        )

    def complete_many(
        self, jobs: list[PromptJob], settings: GenerationSettings
    ) -> list[Completion]:
        """The jobs one after the other (parallelism comes from the worker threads)."""
        return [self.complete(job, settings) for job in jobs]


class ResponseTooLarge(ValueError):
    """An answer over MAX_RESPONSE_BYTES (read no further)."""


def _read_bounded(response: Any) -> bytes:
    """The response body, or ResponseTooLarge when it is larger than MAX_RESPONSE_BYTES."""
    data = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise ResponseTooLarge(f"response larger than {MAX_RESPONSE_BYTES >> 20} MB")
    return data


def _error_detail(exc: urllib.error.HTTPError) -> str:
    if 300 <= exc.code < 400:
        return "redirects are not followed (the document goes to the named endpoint only)"
    try:
        body = json.loads(exc.read(65536) or b"{}")
    except (ValueError, OSError):
        return exc.reason if isinstance(exc.reason, str) else str(exc.code)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if isinstance(error, str):
        return error
    return str(body)[:200]
