"""The one error hierarchy of sovcli.

Every failure a user can cause or meet is a `SovcliError` subclass carrying a one-line
message, an optional hint and an exit code. The CLI (`sovcli.cli.main`) is the only place
that turns them into output; the server maps them to HTTP statuses through `http_status`.
Library code raises these and never prints or exits.
"""

from __future__ import annotations


class SovcliError(Exception):
    """Base class: a failure with a user-facing message, a hint and an exit code."""

    exit_code: int = 1
    http_status: int = 500
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(SovcliError):
    """The command line or a request parameter is wrong."""

    exit_code = 2
    http_status = 400


class InvalidNameError(UsageError):
    """A model name or tag that could escape the store or is malformed."""

    default_hint = (
        "Names use letters, digits, '.', '_', '-' and '/' between parts, e.g. smollm2-135m:Q4_1."
    )


class CatalogError(SovcliError):
    """models.toml (bundled or user) is malformed."""

    exit_code = 3


class ModelNotFoundError(SovcliError):
    """An alias, hub repo, file or installed model that does not exist."""

    exit_code = 4
    http_status = 404


class NetworkError(SovcliError):
    """The network (hub, mirror or index) could not be reached."""

    exit_code = 5
    http_status = 503
    default_hint = (
        "Check the connection, set HF_ENDPOINT to your site's hub mirror, or work offline "
        "with a model already in the store (HF_HUB_OFFLINE=1) or an air-gap bundle."
    )


class AuthError(SovcliError):
    """401/403 from a hub: gated repository or bad token."""

    exit_code = 6
    http_status = 401
    default_hint = (
        "Accept the model's licence on the hub and set HF_TOKEN to a token that may read it."
    )


class IntegrityError(SovcliError):
    """A checksum mismatch, a tampered or truncated file, or a file that is not a GGUF."""

    exit_code = 7
    http_status = 500


class StoreError(SovcliError):
    """The model store cannot be read or written (disk full, permissions, lock)."""

    exit_code = 8


class DiskFullError(StoreError):
    """No space left while writing; the partial file has been removed."""

    default_hint = "Free some disk space or point SOVCLI_HOME at a larger volume, then retry."


class ConversionError(SovcliError):
    """A checkpoint cannot be converted or quantized."""

    exit_code = 9


class EngineError(SovcliError):
    """llama.cpp failed to load a model or to decode."""

    exit_code = 10


class ContextOverflowError(EngineError):
    """The prompt does not fit in the context window."""

    http_status = 400
    default_hint = "Shorten the prompt, lower --max-tokens, or raise --ctx."


class PolicyError(SovcliError):
    """The site policy file is malformed: every command stops (fail closed)."""

    exit_code = 12
    http_status = 500
    default_hint = (
        "Fix the policy file named above (see docs/governance.md), or ask your site's "
        "administrator; sovcli runs nothing while its policy cannot be read."
    )


class PolicyDenied(SovcliError):
    """The site policy forbids this action (a rule named in the message)."""

    exit_code = 11
    http_status = 403
    default_hint = "Run `sovcli policy check MODEL` to see what the site policy allows and why."


class SignatureError(IntegrityError):
    """A model signature is invalid, untrusted, or cannot be made."""


class AuditError(StoreError):
    """The audit trail cannot be written or read, or it fails verification."""

    exit_code = 13


class Cancelled(SovcliError):
    """The user interrupted the operation."""

    exit_code = 130
    http_status = 499
