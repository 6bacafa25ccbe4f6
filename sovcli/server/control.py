"""Talking to a running `sovcli serve`: what it holds (`/api/ps`), unloading a model
(`/api/stop`). Used by `sovcli ps` and `sovcli stop`; plain urllib, loopback or any URL.

Errors are sovcli errors with a hint: the server cannot be reached (NetworkError), the key
is missing or wrong (AuthError), the model is not served there (ModelNotFoundError).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from sovcli.errors import AuthError, ModelNotFoundError, NetworkError, SovcliError, UsageError

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
MAX_REPLY_BYTES = 8 * 1024 * 1024


def base_url(url: str) -> str:
    """`url` without a trailing `/`, `/v1` or `/api` (people paste what their client uses)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url {url!r} is not an http(s) URL", hint=f"e.g. --url {DEFAULT_URL}")
    path = parts.path.rstrip("/")
    for suffix in ("/v1", "/api"):
        path = path.removesuffix(suffix)
    return f"{parts.scheme}://{parts.netloc}{path}"


def call(url: str, method: str, path: str, api_key: str | None, body: Any = None) -> Any:
    """One JSON request to the server; its JSON answer, or a sovcli error."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url(url) + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read(MAX_REPLY_BYTES))
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, url) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(
            f"cannot reach a sovcli server at {base_url(url)}: {reason}",
            hint="Is `sovcli serve` running there? Point at it with --url.",
        ) from None
    except ValueError as exc:
        raise NetworkError(f"{base_url(url)} did not answer with JSON: {exc}") from None


def _http_error(exc: urllib.error.HTTPError, url: str) -> SovcliError:
    try:
        detail = json.loads(exc.read(65536)).get("error")
    except (ValueError, AttributeError, OSError):
        detail = None
    if isinstance(detail, dict):
        detail = detail.get("message")
    message = str(detail or exc.reason)[:300]
    if exc.code == 401:
        return AuthError(
            f"the server refused the API key: {message}",
            hint="Set SOVCLI_API_KEY (or --api-key) to one of the server's keys.",
        )
    if exc.code == 404:
        return ModelNotFoundError(message, hint=f"See what {base_url(url)} serves: sovcli ps.")
    if exc.code == 403:
        return AuthError(message)
    return NetworkError(f"the server answered {exc.code}: {message}")


def loaded_models(url: str, api_key: str | None) -> list[dict[str, Any]]:
    """`/api/ps`: the models the server holds now, with sovcli's detail."""
    reply = call(url, "GET", "/api/ps", api_key)
    models = reply.get("models") if isinstance(reply, dict) else None
    if not isinstance(models, list):
        raise NetworkError(f"{base_url(url)} is not a sovcli or Ollama server (no /api/ps)")
    return [m for m in models if isinstance(m, dict)]


def stop_model(url: str, api_key: str | None, model: str) -> dict[str, Any]:
    """`/api/stop`: unload `model` now (or once its requests finish)."""
    reply = call(url, "POST", "/api/stop", api_key, {"model": model})
    if not isinstance(reply, dict) or "status" not in reply:
        raise NetworkError(f"{base_url(url)} did not say what became of '{model}'")
    return reply
