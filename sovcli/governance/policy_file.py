"""The site policy file: where it is, its strict schema, and what it says (`Policy`).

The policy is TOML at `$SOVCLI_POLICY`, else `/etc/sovcli/policy.toml`; no file there means no
policy. Everything in it is checked before anything is decided: an unknown key, a wrong type,
a trusted key file that is missing, not PEM or writable by every user, or a policy file that
is itself writable by every user is a `PolicyError` naming the file, the key and the problem
(fail closed). Relative paths are resolved against the policy file's folder.

    version = 1                                   # optional; only 1 exists
    [signatures]
    require = true                                # a valid signature from a trust anchor
    trusted_keys = ["keys/site.pub"]              # PEM public keys
    trusted_cas = ["pki/site-ca.pem"]             # PEM CA certificates
    [models]
    allow = ["smollm2-135m", "qwen2.5-*:Q4_K_M", "sha256:<64 hex>"]
    [licenses]
    allow = ["apache-2.0", "mit"]
    [sources]
    allow = ["bundle", "file", "mirror:https://hub.example.bank"]
    network = "deny"                              # "allow" (default) or "deny"
    [audit]
    require = true                                # SOVCLI_AUDIT=0 cannot turn the trail off
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sovcli import settings
from sovcli.errors import PolicyError

if TYPE_CHECKING:
    from sovcli.governance.signing import TrustAnchors

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_POLICY_PATH = Path("/etc/sovcli/policy.toml")
MAX_POLICY_BYTES = 1024 * 1024
MAX_KEY_FILE_BYTES = 1024 * 1024
PUBLIC_HUB = "https://huggingface.co"
SOURCE_KINDS = ("hub", "pypi", "bundle", "file")
"""Plain source names a policy may allow; a site mirror is `mirror:<URL>`."""
NETWORK_KINDS = frozenset({"hub", "mirror", "pypi"})
"""Sources that use the network (refused by `network = "deny"` before any connection)."""

_SCHEMA: dict[str, dict[str, str]] = {
    "signatures": {"require": "bool", "trusted_keys": "paths", "trusted_cas": "paths"},
    "models": {"allow": "models"},
    "licenses": {"allow": "strings"},
    "sources": {"allow": "sources", "network": "network"},
    "audit": {"require": "bool"},
}
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_PATTERN = re.compile(r"[A-Za-z0-9._/*?\[\]!:-]+")


@dataclass(frozen=True)
class Policy:
    """A parsed, checked site policy. A list that is None is a rule the policy does not set."""

    path: Path
    sha256: str
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()
    trusted_cas: tuple[Path, ...] = ()
    allow_models: tuple[str, ...] | None = None
    allow_licenses: tuple[str, ...] | None = None
    allow_sources: tuple[str, ...] | None = None
    network: str = "allow"
    require_audit: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def trust_anchors(self) -> TrustAnchors:
        """The keys and CA certificates the policy trusts (for signature checks)."""
        from sovcli.governance.signing import TrustAnchors  # imported when needed: start-up

        return TrustAnchors(public_keys=self.trusted_keys, ca_certificates=self.trusted_cas)

    def rules(self) -> dict[str, Any]:
        """The rules in force, as plain data (for `policy check`, attest and the ML-BOM)."""
        return {
            "signatures.require": self.require_signature,
            "signatures.trusted_keys": [str(p) for p in self.trusted_keys],
            "signatures.trusted_cas": [str(p) for p in self.trusted_cas],
            "models.allow": None if self.allow_models is None else list(self.allow_models),
            "licenses.allow": None if self.allow_licenses is None else list(self.allow_licenses),
            "sources.allow": None if self.allow_sources is None else list(self.allow_sources),
            "sources.network": self.network,
            "audit.require": self.require_audit,
        }


def policy_location() -> tuple[Path, bool]:
    """The policy file to read, and whether it was named explicitly ($SOVCLI_POLICY)."""
    named = settings.get("SOVCLI_POLICY")
    if named:
        return Path(named).expanduser().absolute(), True
    return DEFAULT_POLICY_PATH, False


def normal_url(url: str) -> str:
    """A hub URL as policies compare it: scheme and host lower-cased, no trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def load_policy(path: Path) -> Policy:
    """Read and check the policy at `path`; PolicyError naming file, key and problem."""
    data, digest = _read(path)
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as exc:
        raise policy_error(path, None, f"not valid TOML ({exc})") from exc
    version = doc.pop("version", 1)
    if version != 1 or isinstance(version, bool):
        raise policy_error(
            path, "version", f"unsupported version {version!r} (this sovcli reads 1)"
        )
    values: dict[str, Any] = {}
    for table, raw in doc.items():
        if table not in _SCHEMA:
            raise policy_error(path, table, f"unknown key (known: version, {', '.join(_SCHEMA)})")
        if not isinstance(raw, dict):
            raise policy_error(path, table, f"expected a table [{table}], got {_kind(raw)}")
        for key, value in raw.items():
            kind = _SCHEMA[table].get(key)
            if kind is None:
                known = ", ".join(_SCHEMA[table])
                raise policy_error(
                    path, f"{table}.{key}", f"unknown key (known in [{table}]: {known})"
                )
            values[f"{table}.{key}"] = _CHECKS[kind](path, f"{table}.{key}", value)
    policy = Policy(
        path=path,
        sha256=digest,
        require_signature=values.get("signatures.require", False),
        trusted_keys=values.get("signatures.trusted_keys", ()),
        trusted_cas=values.get("signatures.trusted_cas", ()),
        allow_models=values.get("models.allow"),
        allow_licenses=values.get("licenses.allow"),
        allow_sources=values.get("sources.allow"),
        network=values.get("sources.network", "allow"),
        require_audit=values.get("audit.require", False),
        raw=doc,
    )
    if policy.require_signature and policy.trust_anchors.empty:
        raise policy_error(
            path,
            "signatures.require",
            "is true but no signatures.trusted_keys or signatures.trusted_cas are listed",
        )
    return policy


def _read(path: Path) -> tuple[str, str]:
    """The policy's text and the sha256 of its bytes."""
    data = _read_guarded(path, None, path, MAX_POLICY_BYTES, "")
    try:
        return data.decode("utf-8"), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError as exc:
        raise policy_error(path, None, f"is not UTF-8 text (byte {exc.start})") from exc


def _read_guarded(path: Path, key: str | None, file: Path, limit: int, label: str) -> bytes:
    """The bytes of `file` (the policy, or a file it names at `key`): a regular file, at most
    `limit` bytes, that not every user may write (a site must not trust what anyone can swap)."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):  # never open a FIFO or a device
            raise policy_error(path, key, f"{label}is not a regular file")
        with file.open("rb") as fh:
            info = os.fstat(fh.fileno())
            data = fh.read(limit + 1)
    except OSError as exc:
        raise policy_error(path, key, f"{label}cannot be read ({exc.strerror or exc})") from exc
    if len(data) > limit:
        raise policy_error(path, key, f"{label}is larger than {limit:,} bytes")
    if info.st_mode & stat.S_IWOTH:
        raise policy_error(path, key, f"{label}is writable by every user (chmod o-w it)")
    return data


def policy_error(path: Path, key: str | None, problem: str) -> PolicyError:
    """The PolicyError for `problem` at `key` (None: the file itself) of the policy `path`."""
    where = f"policy {path}" + (f": key {key}" if key else "")
    return PolicyError(f"{where}: {problem}")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _check_bool(path: Path, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise policy_error(path, key, f"expected true or false, got {_kind(value)} {value!r}")
    return value


def _check_strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise policy_error(path, key, f"expected a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or not item.isprintable():
            raise policy_error(path, f"{key}[{i}]", f"expected a non-empty string, got {item!r}")
    return tuple(item.strip().lower() for item in value)


def _check_models(path: Path, key: str, value: Any) -> tuple[str, ...]:
    entries = _check_strings(path, key, value)
    for i, entry in enumerate(entries):
        if entry.startswith("sha256:") and not _SHA256.fullmatch(entry):
            raise policy_error(path, f"{key}[{i}]", f"{entry!r} is not sha256: and 64 hex digits")
        if not _PATTERN.fullmatch(entry):
            raise policy_error(
                path, f"{key}[{i}]", f"{entry!r} is not a model name, name:tag or glob"
            )
    return entries


def _check_sources(path: Path, key: str, value: Any) -> tuple[str, ...]:
    entries = _check_strings(path, key, value)
    out = []
    for i, entry in enumerate(entries):
        if entry.startswith("mirror:"):
            url = entry[len("mirror:") :]
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise policy_error(path, f"{key}[{i}]", f"{url!r} is not an http(s) URL")
            out.append(f"mirror:{normal_url(url)}")
        elif entry in SOURCE_KINDS:
            out.append(entry)
        else:
            known = ", ".join((*SOURCE_KINDS, "mirror:<URL>"))
            raise policy_error(path, f"{key}[{i}]", f"unknown source {entry!r} (known: {known})")
    return tuple(out)


def _check_network(path: Path, key: str, value: Any) -> str:
    if value not in ("allow", "deny"):
        raise policy_error(path, key, f'expected "allow" or "deny", got {value!r}')
    return str(value)


def _check_paths(path: Path, key: str, value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list):
        raise policy_error(path, key, f"expected a list of file paths, got {_kind(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise policy_error(path, where, f"expected a file path, got {item!r}")
        file = Path(item).expanduser()
        file = file if file.is_absolute() else path.parent / file
        _check_pem(path, where, file)
        out.append(file)
    return tuple(out)


def _check_pem(path: Path, key: str, file: Path) -> None:
    """A trust anchor must be a readable PEM file that not every user may replace."""
    head = _read_guarded(path, key, file, MAX_KEY_FILE_BYTES, f"{file} ")
    if b"-----BEGIN " not in head:
        raise policy_error(path, key, f"{file} is not PEM (no -----BEGIN line)")


_CHECKS = {
    "bool": _check_bool,
    "strings": _check_strings,
    "models": _check_models,
    "sources": _check_sources,
    "network": _check_network,
    "paths": _check_paths,
}
