"""HTTP errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Any

from sovcli.errors import ContextOverflowError, ModelNotFoundError, PolicyDenied, SovcliError


class APIError(Exception):
    """An error response to send: status, OpenAI error type/code/param, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON document OpenAI clients parse."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        """The body, encoded."""
        return json.dumps(self.body(), ensure_ascii=False).encode("utf-8")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a wrong request parameter."""
    return APIError(400, message, param=param, code=code)


def internal_error() -> APIError:
    """A 500 that says nothing about internals."""
    return APIError(500, "internal server error", code="internal_error")


def overloaded(retry_after_s: int, message: str = "server is busy, retry later") -> APIError:
    """A 503 with `Retry-After` (queue full, or model still loading)."""
    return APIError(
        503,
        message,
        type_="server_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )


def audit_unavailable(reason: str | None, retry_after_s: int) -> APIError:
    """A 503 for a request that cannot be audited (the audit log cannot be written)."""
    cause = f" ({reason})" if reason else ""
    return APIError(
        503,
        f"the audit log cannot be written{cause}; requests are refused until it can",
        type_="server_error",
        code="audit_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


def headers_too_large(limit: int) -> APIError:
    """A 431 for a request line and headers over the cap."""
    return APIError(
        431,
        f"the request line and headers are larger than this server's limit of {limit} bytes",
        code="request_header_fields_too_large",
    )


def request_timeout(seconds: float) -> APIError:
    """A 408 for a request body that did not arrive in time."""
    return APIError(
        408,
        f"the request body did not arrive within {seconds:g} seconds",
        code="request_timeout",
        headers={"Connection": "close"},
    )


def from_sovcli_error(exc: SovcliError) -> APIError:
    """Map a library error to the response a client should see (no internals for 5xx)."""
    if isinstance(exc, ContextOverflowError):
        return APIError(400, exc.message, code="context_length_exceeded")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, exc.message, param="model", code="model_not_found")
    if isinstance(exc, PolicyDenied):
        return policy_denied(exc)
    status = exc.http_status
    if 400 <= status < 500:
        return APIError(status, exc.message)
    return internal_error()


def policy_denied(exc: PolicyDenied) -> APIError:
    """A 403 for a model the site policy refuses. `request_forbidden` is the type OpenAI's
    API gives its own 403s (e.g. code `unsupported_country_region_territory`)."""
    return APIError(403, exc.message, type_="request_forbidden", code="policy_denied")


def context_overflow(n_ctx: int, n_tokens: int, param: str, *, head_chars: int = 0) -> APIError:
    """A prompt longer than the context, worded as OpenAI words it: clients (litellm,
    LangChain) recognise a context overflow by this message and `code`. `head_chars`: only
    that many characters of the prompt were tokenized (they alone gave `n_tokens`)."""
    count = str(n_tokens)
    if head_chars:
        count = f"more than {n_ctx} (the first {head_chars} characters alone have {n_tokens})"
    return APIError(
        400,
        f"This model's maximum context length is {n_ctx} tokens. However, your {param} "
        f"resulted in {count} tokens. Please reduce the length of the {param}.",
        param=param,
        code="context_length_exceeded",
    )


def _default_type(status: int) -> str:
    """The `type` OpenAI's API gives errors of this status: `invalid_request_error` for
    client errors (401 for a wrong key too, with code `invalid_api_key`; 403; 404),
    `requests` for 429 (a request-rate limit; its code is `rate_limit_exceeded`),
    `server_error` for 5xx."""
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"
