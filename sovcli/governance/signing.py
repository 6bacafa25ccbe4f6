"""OMS model signatures (OpenSSF Model Signing, via the `model-signing` library).

The signature is the file `SIGNATURE_FILE` in the model's store directory, covering the files
`identity.signed_files(manifest)` lists (the manifest itself is not signed: it is rebuilt on
import; its hashes are checked against the signed files). It is the same detached signature
the `model_signing` CLI makes and checks on that directory (both ways).

States of a model's signature (`verify_model`):
- ok: it verifies with a trust anchor (a public key, or a CA its certificate chains to) and
  every file the model lists has the signed digest;
- absent: no `model.sig`;
- invalid: unreadable, its cryptographic signature fails with the key it names, it does not
  cover exactly the model's files, or a file's digest differs (the detail names the file);
- untrusted: well-formed and matching the files, but from no trust anchor (with no anchors
  at all, a key signature cannot even be checked: it is never "ok").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sovcli.errors import IntegrityError, SignatureError, SovcliError, UsageError
from sovcli.governance import oms
from sovcli.governance.identity import model_digest, signed_files
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.layout import file_in
from sovcli.store.model import InstalledModel

SIGNATURE_FILE = "model.sig"

SignatureState = Literal["ok", "absent", "invalid", "untrusted"]


@dataclass(frozen=True)
class TrustAnchors:
    """What a verifier trusts: public keys (PEM) and CA certificates (PEM) of the site."""

    public_keys: tuple[Path, ...] = ()
    ca_certificates: tuple[Path, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing is trusted (a signature can then only be checked for form)."""
        return not self.public_keys and not self.ca_certificates

    def merged(self, other: TrustAnchors | None) -> TrustAnchors:
        """These anchors and `other`'s (duplicates once)."""
        if other is None:
            return self
        keys = dict.fromkeys((*self.public_keys, *other.public_keys))
        cas = dict.fromkeys((*self.ca_certificates, *other.ca_certificates))
        return TrustAnchors(tuple(keys), tuple(cas))


@dataclass(frozen=True)
class SignatureStatus:
    """The result of checking a model's signature."""

    state: SignatureState
    signer: str | None = None  # key fingerprint or certificate subject
    method: str | None = None  # "key", "certificate", "pkcs11", "sigstore"
    detail: str = ""  # one line: why invalid/untrusted, or which file differs
    files: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`sovcli verify --json`, the evidence pack)."""
        data = asdict(self)
        data["files"] = list(self.files)
        return data


@dataclass(frozen=True)
class SigningKey:
    """How to sign: a PEM private key (method "key"), plus a certificate and its chain
    (method "certificate"), or a PKCS#11 URI (method "pkcs11", with a certificate optional)."""

    private_key: Path | None = None
    password: str | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    pkcs11_uri: str | None = None
    pkcs11_modules: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        """ "pkcs11", "certificate" or "key"."""
        if self.pkcs11_uri:
            return "pkcs11"
        return "certificate" if self.certificate else "key"


# --------------------------------------------------------------------------- verifying


def verify_model(
    directory: Path,
    files: list[str],
    anchors: TrustAnchors,
    *,
    digests: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> SignatureStatus:
    """Check the signature in `directory` over `files` against `anchors`.

    `digests` (relative path -> sha256 hex) are hashes the caller has just checked against
    these very files (a store verify, a bundle extraction): they are used instead of
    re-hashing when the signature is per-file sha256 (the format sovcli writes).
    """
    directory = Path(directory)
    covered = tuple(sorted(files))
    if not (directory / SIGNATURE_FILE).is_file():
        return SignatureStatus("absent", files=covered)
    try:
        statement = oms.read_statement(directory / SIGNATURE_FILE)
    except SignatureError as exc:
        return SignatureStatus("invalid", detail=exc.message, files=covered)
    who = {"signer": statement.signer, "method": statement.method, "files": covered}
    trust, reason = _trust(statement, anchors)
    if trust == "invalid":
        return SignatureStatus("invalid", detail=reason, **who)
    try:
        problem = _files_problem(directory, covered, statement, digests, progress or NULL_PROGRESS)
    except SovcliError as exc:  # a file that cannot be read or named
        problem = exc.message
    if problem:
        return SignatureStatus("invalid", detail=problem, **who)
    return SignatureStatus(trust, detail=reason, **who)


def verify_installed(
    model: InstalledModel,
    anchors: TrustAnchors,
    *,
    files_verified: bool = False,
    progress: Progress | None = None,
) -> SignatureStatus:
    """`verify_model` for an installed model; `files_verified`: its files were just
    re-hashed against its manifest (their manifest sha256 are then used, not re-hashed)."""
    records = model.manifest.get("files", []) or []
    digests = {r["path"]: r["sha256"] for r in records} if files_verified else None
    return verify_model(
        model.directory,
        signed_files(model.manifest),
        anchors,
        digests=digests,
        progress=progress,
    )


def _trust(statement: oms.SignedStatement, anchors: TrustAnchors) -> tuple[str, str]:
    """("ok" | "untrusted" | "invalid", one-line reason) for the signature's signer."""
    keys = {oms.key_fingerprint(k): k for k in map(oms.load_public_key, anchors.public_keys)}
    if statement.method == "certificate":
        leaf_key = statement.certificates[0].public_key()
        if not oms.dsse_verifies(statement, leaf_key):
            return "invalid", "the signature does not verify with its own certificate's key"
        if oms.key_fingerprint(leaf_key) in keys:
            return "ok", "the certificate's key is a trusted key"
        if not anchors.ca_certificates:
            return "untrusted", _no_anchor(anchors)
        problem = oms.chain_problem(statement, anchors.ca_certificates)
        if problem:
            return "untrusted", f"the certificate does not chain to a trusted CA: {problem}"
        return "ok", "the certificate chains to a trusted CA"
    if statement.key_hint is not None:
        key = keys.get(statement.signer)
        if key is None:
            return "untrusted", _no_anchor(anchors)
        if not oms.dsse_verifies(statement, key):
            return "invalid", f"the signature does not verify with key {statement.signer}"
        return "ok", "signed by a trusted key"
    for fingerprint, key in keys.items():  # an older signature that names no key
        if oms.dsse_verifies(statement, key):
            return "ok", f"signed by trusted key {fingerprint}"
    return "untrusted", _no_anchor(anchors) + " (the signature names no key)"


def _no_anchor(anchors: TrustAnchors) -> str:
    if anchors.empty:
        return (
            "no trust anchor was given (--key/--ca or a site policy): only its form and the "
            "file digests could be checked"
        )
    return "the signer is not among the trust anchors"


def _files_problem(
    directory: Path,
    files: tuple[str, ...],
    statement: oms.SignedStatement,
    digests: Mapping[str, str] | None,
    progress: Progress,
) -> str | None:
    """Why the model's files are not exactly the signed ones, naming the first file."""
    by_file: dict[str, dict[str, tuple[str, str]]] = {}
    shards = statement.serialization.get("method") == "shards"
    for identifier, digest in statement.resources.items():
        path = identifier.rsplit(":", 2)[0] if shards else identifier
        if path not in oms.IGNORED_BY_SIGNATURE:  # a CLI signature may cover manifest.json
            by_file.setdefault(path, {})[identifier] = digest
    missing = [f for f in files if f not in by_file]
    if missing:
        return f"{missing[0]} is not covered by the signature"
    extra = sorted(set(by_file) - set(files))
    if extra:
        return f"the signature covers {extra[0]}, which the model does not have"
    absent = [f for f in files if not file_in(directory, f).is_file()]
    if absent:
        return f"{absent[0]} is missing"
    if shards:  # bound the work a hostile shard size could ask for, before hashing
        size = statement.serialization.get("shard_size")
        if isinstance(size, float) and size.is_integer():  # JSON in protobuf: a double
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return f"the signature's shard size {size!r} is not a positive integer"
        for path in files:
            count = max(1, -(-file_in(directory, path).stat().st_size // size))
            if count != len(by_file[path]):
                return f"{path} differs from the signed file (its size or shards differ)"
    actual = _actual_digests(directory, list(files), statement.serialization, digests, progress)
    for path in files:
        shown = {i: d for i, d in actual.items() if (i.rsplit(":", 2)[0] if shards else i) == path}
        if set(shown) != set(by_file[path]):  # other shards: the file's size changed
            return f"{path} differs from the signed file (its size or shards differ)"
        for identifier, expected in sorted(by_file[path].items()):
            if shown[identifier] != expected:
                return f"{path} differs from the signed file ({expected[0]} {expected[1][:16]}…)"
    return None


def _actual_digests(
    directory: Path,
    files: list[str],
    serialization: dict[str, Any],
    digests: Mapping[str, str] | None,
    progress: Progress,
) -> dict[str, tuple[str, str]]:
    from sovcli.store.hashing import sha256_file

    per_file = serialization.get("method") == "files"
    if not (per_file and serialization.get("hash_type") == "sha256"):
        try:
            return oms.hash_files(directory, files, serialization)
        except (OSError, ValueError, TypeError, KeyError) as exc:  # its parameters are hostile
            raise SignatureError(f"cannot hash the files as signed: {oms.one_line(exc)}") from exc
    actual: dict[str, tuple[str, str]] = {}
    for rel in files:
        known = (digests or {}).get(rel)
        if known is None:
            path = file_in(directory, rel)
            if not path.is_file():
                continue
            task = progress.task(f"check signature {rel}", path.stat().st_size, unit="B")
            try:
                known = sha256_file(path, task.advance)
            except OSError as exc:
                raise SignatureError(f"cannot read {rel}: {exc.strerror or exc}") from exc
            task.close()
        actual[rel] = ("sha256", known)
    return actual


# --------------------------------------------------------------------------- signing


def sign_model(
    model: InstalledModel, key: SigningKey, *, progress: Progress | None = None
) -> SignatureStatus:
    """Sign an installed model's files with `key`, writing `model.sig` beside them.

    The files are hashed and compared with the manifest first: a model that fails
    verification is not signed (IntegrityError). Records an audit event "sign".
    """
    from sovcli.governance.audit import audit_event
    from sovcli.store.layout import lock_path
    from sovcli.store.locks import model_lock

    files = signed_files(model.manifest)
    if not files or SIGNATURE_FILE in files:
        raise IntegrityError(f"{model.ref} has no files a signature can cover")
    signer, who = _signer(key)
    (progress or NULL_PROGRESS).note(f"hashing and signing {len(files)} file(s) of {model.ref}")
    with model_lock(lock_path(model.name)):
        signed = _sign_files(model.directory, files, signer, model.directory / SIGNATURE_FILE)
        expected = {r["path"]: r["sha256"] for r in model.manifest["files"]}
        wrong = [f for f in files if signed.get(f) != ("sha256", expected.get(f))]
        if wrong:
            (model.directory / SIGNATURE_FILE).unlink(missing_ok=True)
            raise IntegrityError(
                f"{model.ref}: {wrong[0]} does not match its manifest; not signed",
                hint="Run `sovcli verify`; pull the model again before signing it.",
            )
    status = SignatureStatus("ok", signer=who, method=key.method, files=tuple(files))
    audit_event(
        "sign",
        model=model.ref,
        model_digest=model_digest(model),
        signer=who,
        method=key.method,
        files=len(files),
    )
    return status


def _sign_files(directory: Path, files: list[str], signer: Any, out: Path) -> dict:
    try:
        return oms.sign_files(directory, files, signer, out)
    except OSError as exc:
        raise IntegrityError(f"cannot sign: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a symbolic link, a file gone
        raise IntegrityError(f"cannot sign: {oms.one_line(exc)}") from exc


def _signer(key: SigningKey) -> tuple[Any, str]:
    """The model_signing signer for `key`, and who it signs as (fingerprint or subject)."""
    if key.pkcs11_uri:
        return _pkcs11_signer(key)
    if key.private_key is None:
        raise UsageError("nothing to sign with", hint="Pass --key KEY.pem or --pkcs11-uri URI.")
    password = key.password.encode() if key.password is not None else None
    try:
        return oms.key_signer(key.private_key, password, key.certificate, list(key.chain))
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: not an EC key
        raise UsageError(
            f"cannot sign with this key: {oms.one_line(exc)}",
            hint="Use an EC private key (P-256, P-384 or P-521) in PEM, its password if it "
            "has one, and the certificate of that key; "
            "`openssl ecparam -name prime256v1 -genkey -noout -out key.pem` makes a key.",
        ) from exc


def _pkcs11_signer(key: SigningKey) -> tuple[Any, str]:
    try:
        import PyKCS11  # noqa: F401
    except ImportError:
        raise UsageError(
            "signing with a PKCS#11 token needs the PyKCS11 module, which is not installed",
            hint="pip install 'sovcli[pkcs11]' (model-signing's pkcs11 extra), then retry.",
        ) from None
    try:
        return oms.pkcs11_signer(
            str(key.pkcs11_uri), list(key.pkcs11_modules), key.certificate, list(key.chain)
        )
    except Exception as exc:  # PyKCS11Error, ValueError, OSError: all one message
        raise UsageError(
            f"cannot use the PKCS#11 key: {oms.one_line(exc) or type(exc).__name__}",
            hint="Check the URI (token=, object= or id=, pin-value= or pin-source=) and "
            "module-path= (e.g. /usr/lib/softhsm/libsofthsm2.so).",
        ) from exc
