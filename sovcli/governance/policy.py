"""The site policy every command enforces before it touches a model (fail closed).

`current_policy()` reads the policy file (`governance.policy_file`: `$SOVCLI_POLICY`, else
/etc/sovcli/policy.toml; none = no policy, today's behaviour). Commands then ask:

- `enforce_source(kind, location, action)` before anything is fetched: `sources.network`
  (`network = "deny"` refuses hub, mirror and PyPI sources before any connection) and
  `sources.allow`;
- `enforce_files(directory, manifest, action)` on files not yet registered (a bundle's, a
  download's, an imported file's): `models.allow`, `licenses.allow`, `signatures.require`;
- `enforce_use(model, action)` before a model is loaded, exported or signed: every rule,
  `sources.allow` against the provenance the manifest records.

A refusal raises PolicyDenied naming the policy file and the rule; every decision (allow
and deny) is an audit record (`governance.audit.audit_event("policy", ...)`); an allow is
recorded once per process for the same policy, model and action. Actions: pull, import,
export, run, chat, serve, batch, embed, bench, sign.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sovcli.errors import PolicyDenied, SovcliError
from sovcli.governance.audit import audit_event
from sovcli.governance.identity import model_digest, signed_files
from sovcli.governance.policy_file import (
    NETWORK_KINDS,
    PUBLIC_HUB,
    Policy,
    load_policy,
    normal_url,
    policy_error,
    policy_location,
)
from sovcli.store.model import InstalledModel

if TYPE_CHECKING:
    from sovcli.governance.signing import SignatureStatus, TrustAnchors

__all__ = [
    "ACTIONS",
    "Policy",
    "Verdict",
    "audit_required",
    "check_source",
    "check_use",
    "current_policy",
    "describe_policy",
    "digest_of",
    "enforce_files",
    "enforce_network",
    "enforce_source",
    "enforce_use",
    "source_of",
]

ACTIONS = ("pull", "import", "export", "run", "chat", "serve", "batch", "embed", "bench", "sign")
ALLOW, DENY, NOT_SET = "allow", "deny", "not set"

_lock = threading.Lock()
_policy_cache: tuple[tuple[Any, ...], Policy] | None = None
_signature_cache: dict[tuple[Any, ...], SignatureStatus] = {}
_recorded_allows: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class Verdict:
    """One rule's verdict on one model or source: allow, deny or not set, and why."""

    rule: str
    verdict: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """Plain data for --json and audit records."""
        return {"rule": self.rule, "verdict": self.verdict, "reason": self.reason}


@dataclass
class _Subject:
    """What the rules look at: a model in the store, or files about to be registered."""

    ref: str
    name: str
    tag: str | None
    digest: Callable[[], str | None]
    license: str | None
    source: tuple[str, str] | None  # (kind, location); None: not checked here
    directory: Path | None  # where its signature is (None: it has none)
    files: tuple[str, ...] = ()
    hashes_file: bool = False  # its digest means hashing the file (a .gguf used in place)
    _digest: list[str | None] = field(default_factory=list)

    def sha(self) -> str | None:
        """The GGUF's `sha256:<hex>`, computed at most once."""
        if not self._digest:
            self._digest.append(self.digest())
        return self._digest[0]


# --- the policy in force ------------------------------------------------------------------


def current_policy() -> Policy | None:
    """The site policy in force, or None (no policy file: today's behaviour).

    Re-read whenever the file changes (a running server sees a new policy at once); a
    policy that cannot be read or is malformed raises PolicyError (fail closed), as does a
    `$SOVCLI_POLICY` that names a missing file.
    """
    global _policy_cache
    path, named = policy_location()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if named:
            raise policy_error(path, None, "does not exist (named by SOVCLI_POLICY)") from None
        return None
    except OSError as exc:
        raise policy_error(path, None, f"cannot be read ({exc.strerror or exc})") from exc
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    with _lock:
        if _policy_cache is not None and _policy_cache[0] == key:
            return _policy_cache[1]
    policy = load_policy(path)
    with _lock:
        _policy_cache = (key, policy)
    return policy


def audit_required() -> bool:
    """True when the policy in force says `[audit] require = true`: the audit trail is
    written whatever `SOVCLI_AUDIT` says (for `governance.audit.audit_enabled`)."""
    policy = current_policy()
    return policy is not None and policy.require_audit


def describe_policy() -> dict[str, Any]:
    """The policy in force as plain data: `in_force`, `path`, `sha256`, `rules`."""
    policy = current_policy()
    if policy is None:
        path, _named = policy_location()
        return {
            "in_force": False,
            "path": None,
            "sha256": None,
            "rules": {},
            "looked_at": str(path),
        }
    return {
        "in_force": True,
        "path": str(policy.path),
        "sha256": policy.sha256,
        "rules": policy.rules(),
    }


# --- enforcement --------------------------------------------------------------------------


def enforce_use(model: InstalledModel, action: str) -> None:
    """Raise PolicyDenied (after an audit record) if the policy forbids `action` on `model`."""
    policy = current_policy()
    if policy is None:
        return
    subject = _installed_subject(model)
    _enforce(policy, subject, action, _verdicts(policy, subject, action))


def enforce_source(
    kind: str, location: str, action: str = "pull", *, model: str | None = None
) -> None:
    """Raise PolicyDenied if the policy forbids fetching from `kind` at `location`.

    `kind` is "hub" (the public hub or, for another endpoint, a site mirror), "mirror",
    "pypi", "bundle", "file" or "path". `network = "deny"` refuses the network kinds here,
    before any connection. With `model` ("name[:tag]"), what can be decided before the
    download is decided here too: an unsigned source under `signatures.require`, a name
    outside `models.allow`.
    """
    policy = current_policy()
    if policy is None:
        return
    subject, checks = _source_checks(policy, kind, location, action, model)
    where = f"{subject.source[0]} {subject.source[1]}" if subject.source else kind
    _enforce(policy, subject, action, (check() for check in checks), what=where)


def check_source(
    kind: str, location: str, action: str = "pull", *, model: str | None = None
) -> list[Verdict]:
    """What `enforce_source` would decide, rule by rule (for `policy check`; nothing
    recorded). Empty when no policy is in force."""
    policy = current_policy()
    if policy is None:
        return []
    return [check() for check in _source_checks(policy, kind, location, action, model)[1]]


def _source_checks(
    policy: Policy, kind: str, location: str, action: str, model: str | None
) -> tuple[_Subject, list[Callable[[], Verdict]]]:
    kind, location = _classify(kind, location)
    name, _, tag = (model or "").partition(":")
    subject = _Subject(
        ref=model or f"{kind} {location}",
        name=name,
        tag=tag or None,
        digest=lambda: None,
        license=None,
        source=(kind, location),
        directory=None,
    )
    checks: list[Callable[[], Verdict]] = [
        lambda: _rule_network(policy, kind, location),
        lambda: _rule_sources(policy, subject),
    ]
    if model and kind != "bundle":  # a bundle's signature and digest are checked once read
        checks += [lambda: _rule_models(policy, subject, early=True)]
        checks += [lambda: _rule_signature(policy, subject, action, early=True)]
    return subject, checks


def enforce_network(url: str, action: str, *, loopback: bool) -> None:
    """Raise PolicyDenied when `network = "deny"` and `action` would send requests to `url`
    off this machine (`batch --endpoint`); an endpoint on loopback is this machine."""
    policy = current_policy()
    if policy is None or policy.network != "deny":
        return
    subject = _Subject(url, "", None, lambda: None, None, ("endpoint", url), None)
    rule = "sources.network"
    if loopback:
        verdict = Verdict(rule, ALLOW, "an endpoint on this machine (loopback) is not the network")
    else:
        verdict = Verdict(rule, DENY, f'network = "deny" and endpoint {url} is off this machine')
    _enforce(policy, subject, action, iter([verdict]), what=f"endpoint {url}")


def enforce_files(directory: object, manifest: dict[str, Any], action: str) -> None:
    """Raise PolicyDenied if files not yet registered break the policy: `models.allow`,
    `licenses.allow`, `signatures.require` (the signature file in `directory`, None: none).

    Called before registering (bundle import, pull, import); the source was checked first
    by `enforce_source`.
    """
    policy = current_policy()
    if policy is None:
        return
    name, tag = str(manifest.get("name")), str(manifest.get("tag"))
    probe = InstalledModel(name, tag, Path("."), Path("."), manifest)
    subject = _Subject(
        ref=f"{name}:{tag}",
        name=name,
        tag=tag,
        digest=lambda: model_digest(probe),
        license=_license(manifest),
        source=None,
        directory=Path(directory) if directory is not None else None,
        files=tuple(signed_files(manifest)),
    )
    _enforce(policy, subject, action, _verdicts(policy, subject, action))


def digest_of(model: InstalledModel) -> str | None:
    """The `sha256:<hex>` the rules judge `model` by (a .gguf used in place: its hash)."""
    return _installed_subject(model).sha()


def check_use(model: InstalledModel, action: str = "run") -> list[Verdict]:
    """Every rule's verdict on `action` of `model` (for `policy check`; nothing recorded).
    Empty when no policy is in force."""
    policy = current_policy()
    if policy is None:
        return []
    return list(_verdicts(policy, _installed_subject(model), action))


def _verdicts(policy: Policy, subject: _Subject, action: str) -> Iterator[Verdict]:
    """The rules in order, cheapest first (the signature check hashes every file)."""
    yield _rule_models(policy, subject)
    yield _rule_licenses(policy, subject)
    if subject.source is not None:
        yield _rule_sources(policy, subject)
    yield _rule_signature(policy, subject, action)


def _enforce(
    policy: Policy,
    subject: _Subject,
    action: str,
    verdicts: Iterator[Verdict] | Any,
    what: str | None = None,
) -> None:
    """Stop at the first deny (audit record, PolicyDenied); else record the allow."""
    seen: list[Verdict] = []
    for verdict in verdicts:
        seen.append(verdict)
        if verdict.verdict == DENY:
            _record(policy, subject, action, "deny", verdict)
            target = f"of {subject.ref}" if subject.name else ""
            target += f" from {what}" if what is not None else ""
            raise PolicyDenied(
                f"policy {policy.path} denies {action} {target.strip()}: "
                f"rule {verdict.rule}: {verdict.reason}"
            )
    key = (policy.sha256, subject.ref, str(subject.source), action)
    with _lock:
        if key in _recorded_allows:
            return
    _record(policy, subject, action, "allow", None, [v.rule for v in seen if v.verdict == ALLOW])
    with _lock:
        _recorded_allows.add(key)


def _record(
    policy: Policy,
    subject: _Subject,
    action: str,
    decision: str,
    verdict: Verdict | None,
    rules: list[str] | None = None,
) -> None:
    fields: dict[str, Any] = {
        "decision": decision,
        "action": action,
        "model": subject.ref,
        "digest": None if subject.hashes_file and not subject._digest else subject.sha(),
        "policy": str(policy.path),
        "policy_sha256": policy.sha256,
    }
    if subject.source is not None:
        fields["source"] = f"{subject.source[0]} {subject.source[1]}".strip()
    if verdict is not None:
        fields["rule"], fields["reason"] = verdict.rule, verdict.reason
    else:
        fields["rules"] = rules or []
    audit_event("policy", **fields)


# --- subjects -----------------------------------------------------------------------------


def _installed_subject(model: InstalledModel) -> _Subject:
    in_place = (model.manifest.get("source") or {}).get("kind") == "path"
    return _Subject(
        ref=model.ref if not in_place else str(model.gguf_path),
        name=model.name,
        tag=None if in_place else model.tag,
        digest=(lambda: _file_digest(model.gguf_path)) if in_place else lambda: model_digest(model),
        license=_license(model.manifest),
        source=source_of(model.manifest),
        directory=None if in_place else model.directory,
        files=() if in_place else tuple(signed_files(model.manifest)),
        hashes_file=in_place,
    )


def _file_digest(path: Path) -> str:
    from sovcli.store.hashing import sha256_file

    return f"sha256:{sha256_file(path)}"


def _license(manifest: dict[str, Any]) -> str | None:
    value = manifest.get("license")
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def source_of(manifest: dict[str, Any], depth: int = 0) -> tuple[str, str]:
    """Where an installed model came from, as `sources.allow` names it: (kind, location).

    A copy (`sovcli cp`) or a created model (`sovcli create`) came from where its base did."""
    source = manifest.get("source") or {}
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind in ("copy", "created") and depth < 8:
        base = _base_manifest(source)
        if base is not None:
            return source_of(base, depth + 1)
    if kind == "hf":
        return _classify("hub", str(source.get("endpoint") or PUBLIC_HUB))
    if kind == "pypi":
        return "pypi", f"{source.get('package')}=={source.get('version')}"
    if kind == "bundle":
        return "bundle", str(source.get("bundle") or "")
    if kind in ("local", "path"):
        return "file", str(source.get("path") or "")
    return str(kind or "unknown"), ""


def _base_manifest(source: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest a copy or a created model stands on: a copy records its base's source;
    a created model names its base (`from`), looked up in the store."""
    if source.get("kind") == "copy" and isinstance(source.get("original_source"), dict):
        return {"source": source["original_source"]}
    from sovcli.store.names import parse_ref
    from sovcli.store.registry import get_intact

    try:
        ref = parse_ref(str(source.get("from") or ""))
    except SovcliError:
        return None
    base = get_intact(ref.name, ref.tag) if ref.tag else None
    return base.manifest if base is not None else None


def _classify(kind: str, location: str) -> tuple[str, str]:
    """`hub` at another endpoint than the public hub is a site mirror; `path` is a file."""
    if kind in ("hub", "mirror"):
        url = normal_url(location or PUBLIC_HUB)
        return ("hub" if url == normal_url(PUBLIC_HUB) else "mirror"), url
    if kind == "path":
        return "file", location
    return kind, location


# --- rules --------------------------------------------------------------------------------


def _rule_network(policy: Policy, kind: str, location: str) -> Verdict:
    rule = "sources.network"
    if policy.network != "deny":
        return Verdict(rule, NOT_SET, 'network = "allow"')
    if kind in NETWORK_KINDS:
        return Verdict(rule, DENY, f'network = "deny" and a {kind} source uses the network')
    return Verdict(rule, ALLOW, f"a {kind} source needs no network")


def _rule_sources(policy: Policy, subject: _Subject) -> Verdict:
    rule = "sources.allow"
    if policy.allow_sources is None or subject.source is None:
        return Verdict(rule, NOT_SET, "no source allow-list")
    kind, location = subject.source
    entry = f"mirror:{location}" if kind == "mirror" else kind
    label = f"{kind} {location}".strip() if kind in ("hub", "mirror") else kind
    if entry in policy.allow_sources:
        return Verdict(rule, ALLOW, f"source {label} is allowed ({entry!r})")
    allowed = ", ".join(policy.allow_sources) or "nothing"
    return Verdict(rule, DENY, f"source {label} is not in sources.allow ({allowed})")


def _rule_models(policy: Policy, subject: _Subject, early: bool = False) -> Verdict:
    rule = "models.allow"
    if policy.allow_models is None:
        return Verdict(rule, NOT_SET, "no model allow-list")
    ref = subject.ref.lower()
    names = [e for e in policy.allow_models if not e.startswith("sha256:")]
    for entry in names:
        target = ref if ":" in entry else subject.name.lower()
        if subject.name and fnmatchcase(target, entry):
            return Verdict(rule, ALLOW, f"{subject.ref} matches {entry!r}")
    digests = [e for e in policy.allow_models if e.startswith("sha256:")]
    if early:  # before the download: only a name can be judged
        if digests:
            return Verdict(rule, NOT_SET, "its digest is checked once downloaded")
        return Verdict(rule, DENY, f"{subject.ref} is not in models.allow")
    digest = subject.sha() if digests else None
    if digest and digest in digests:
        return Verdict(rule, ALLOW, f"its digest {digest} is allowed")
    shown = f" ({digest})" if digest else ""
    return Verdict(rule, DENY, f"{subject.ref}{shown} is not in models.allow")


def _rule_licenses(policy: Policy, subject: _Subject) -> Verdict:
    rule = "licenses.allow"
    if policy.allow_licenses is None:
        return Verdict(rule, NOT_SET, "no licence allow-list")
    if subject.license is None:
        return Verdict(rule, DENY, "the model declares no licence")
    if subject.license in policy.allow_licenses:
        return Verdict(rule, ALLOW, f"licence {subject.license} is allowed")
    return Verdict(rule, DENY, f"licence {subject.license} is not in licenses.allow")


def _rule_signature(policy: Policy, subject: _Subject, action: str, early: bool = False) -> Verdict:
    rule = "signatures.require"
    if not policy.require_signature:
        return Verdict(rule, NOT_SET, "signatures are not required")
    if action == "sign":
        return Verdict(rule, ALLOW, "not required to sign a model")
    if early and subject.source is not None:
        return Verdict(
            rule, DENY, f"a {subject.source[0]} source carries no signature; import a signed bundle"
        )
    if subject.directory is None:
        return Verdict(rule, DENY, "no valid signature from a trusted key (the model has none)")
    status = _verify(subject.directory, subject.files, policy.trust_anchors)
    if status.state == "ok":
        who = f" by {status.signer}" if status.signer else ""
        return Verdict(rule, ALLOW, f"signed{who} (a trusted {status.method or 'key'})")
    detail = f": {status.detail}" if status.detail else ""
    if status.state == "untrusted" and status.signer:
        detail += f"; signed by {status.signer}"
    return Verdict(rule, DENY, f"no valid signature from a trusted key ({status.state}{detail})")


def _verify(directory: Path, files: tuple[str, ...], anchors: TrustAnchors) -> SignatureStatus:
    """`signing.verify_model`, remembered while no file (nor signature, nor anchor) changes."""
    from sovcli.governance.signing import SIGNATURE_FILE, SignatureStatus, verify_model

    watched = [directory / f for f in (*files, SIGNATURE_FILE)]
    watched += [*anchors.public_keys, *anchors.ca_certificates]
    key = (str(directory), files, anchors, tuple(_stamp(p) for p in watched))
    with _lock:
        if key in _signature_cache:
            return _signature_cache[key]
    try:
        status = verify_model(directory, list(files), anchors)
    except NotImplementedError:
        status = SignatureStatus("invalid", detail="signature checks are not available")
    except SovcliError as exc:
        status = SignatureStatus("invalid", detail=exc.message)
    with _lock:
        if len(_signature_cache) > 256:
            _signature_cache.clear()
        _signature_cache[key] = status
    return status


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
