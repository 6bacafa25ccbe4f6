"""API keys: loading them (file or `SOVCLI_API_KEYS`) and checking them in constant time.

Format, in a file or the environment variable: one key per entry, `ID:SECRET` (a bare
`SECRET` gets the id `key<N>`). In a file, entries are one per line and `#` starts a comment;
in the variable they are separated by commas. Secrets are never logged or shown: only ids.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from pathlib import Path

from sovcli import settings
from sovcli.errors import UsageError
from sovcli.server.settings import ApiKey

ENV_VAR = "SOVCLI_API_KEYS"
MIN_SECRET_LENGTH = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_GENERATE_HINT = 'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def parse_keys(entries: list[str], source: str) -> list[ApiKey]:
    """Turn `ID:SECRET` / `SECRET` entries into keys; raise `UsageError` on a bad entry."""
    keys: list[ApiKey] = []
    for number, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep:
            key_id, secret = f"key{len(keys) + 1}", entry
        key_id, secret = key_id.strip(), secret.strip()
        if not _KEY_ID.match(key_id):
            raise UsageError(
                f"{source}: entry {number} has an invalid key id",
                hint="Ids use letters, digits, '.', '_', '@', '-' (e.g. team-a:SECRET).",
            )
        if len(secret) < MIN_SECRET_LENGTH or any(ch.isspace() for ch in secret):
            raise UsageError(
                f"{source}: key '{key_id}' is shorter than {MIN_SECRET_LENGTH} characters "
                "or contains spaces",
                hint=_GENERATE_HINT,
            )
        if any(k.key_id == key_id for k in keys):
            raise UsageError(f"{source}: key id '{key_id}' appears twice")
        keys.append(ApiKey(key_id=key_id, secret=secret))
    return keys


def load_api_keys(key_file: Path | None, env_keys: str | None = None) -> tuple[ApiKey, ...]:
    """Keys from `key_file` (if given) plus `SOVCLI_API_KEYS` (or `env_keys` in its place)."""
    keys: list[ApiKey] = []
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot read the API key file {key_file}: {exc.strerror}",
                hint="One key per line as ID:SECRET.",
            ) from exc
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        keys.extend(parse_keys(lines, str(key_file)))
        if not keys:
            raise UsageError(f"the API key file {key_file} holds no key", hint=_GENERATE_HINT)
    env_value = (settings.raw(ENV_VAR) if env_keys is None else env_keys) or ""
    if env_value.strip():
        for key in parse_keys(env_value.split(","), ENV_VAR):
            if any(k.key_id == key.key_id for k in keys):
                raise UsageError(f"key id '{key.key_id}' is defined twice")
            keys.append(key)
    return tuple(keys)


def key_file_is_shared(key_file: Path) -> bool:
    """True when group or others may read the key file (worth a warning)."""
    try:
        mode = key_file.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


class KeyChecker:
    """Finds which key (by id) a presented secret is, comparing in constant time.

    Secrets are hashed first so every comparison has the same length, and every key is
    compared (no early exit), so timing says nothing about how much of a key matched.
    """

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._digests = [(k.key_id, _digest(k.secret)) for k in keys]

    def identify(self, presented: str | None) -> str | None:
        """The id of the key `presented` matches, or None."""
        if presented is None:
            return None
        candidate = _digest(presented)
        found: str | None = None
        for key_id, digest in self._digests:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = key_id
        return found


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` or `X-Api-Key: KEY`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
