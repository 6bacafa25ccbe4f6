"""The OpenSSF Model Signing (OMS) format, through the `model-signing` library.

Everything that touches that library's classes is here, so that `signing` reads as policy
(what is signed, what counts as ok) and a change of the library's API is one file's work.
An OMS signature is a Sigstore bundle holding a DSSE envelope over an in-toto statement that
lists every signed file with its digest. Signatures are hostile input: reading one never
follows a path it names, and any parse failure is a `SignatureError` with one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.errors import SignatureError, UsageError

MAX_SIGNATURE_BYTES = 16 << 20
"""A signature of a few hundred files is tens of kilobytes: larger files are not read."""
IGNORED_BY_SIGNATURE = ("manifest.json", "model.sig")
"""Files in a model's store directory that a signature never covers (recorded in it as the
OMS `ignore_paths`, so the `model_signing` CLI ignores them too on the same directory)."""
_IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


@dataclass(frozen=True)
class SignedStatement:
    """A parsed (not yet trusted) signature: who it says signed, and what it says it covers."""

    bundle: Any  # sigstore_models Bundle
    method: str  # "key" or "certificate"
    signer: str  # "sha256:<hex>" of the public key (PEM), or the certificate's subject
    key_hint: str | None = None
    certificates: tuple[Any, ...] = ()  # cryptography x509 certificates, leaf first
    resources: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (algo, hex)
    serialization: dict[str, Any] = field(default_factory=dict)


def key_fingerprint(public_key: Any) -> str:
    """`sha256:<hex>` of a public key's PEM (SubjectPublicKeyInfo): the OMS key hint."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def load_public_key(path: Path) -> Any:
    """The public key in a PEM file (a public key, or a certificate's); UsageError if none."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        pass
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except ValueError:
        raise UsageError(
            f"{path} holds no PEM public key",
            hint="Pass the public half (`openssl ec -in KEY.pem -pubout -out PUB.pem`).",
        ) from None


def read_statement(path: Path) -> SignedStatement:
    """Parse the signature file `path` (no trust decided); SignatureError when malformed."""
    from model_signing._signing import sign_sigstore_pb

    try:
        size = path.stat().st_size
        if size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{path.name} is {size:,} bytes (at most {MAX_SIGNATURE_BYTES:,})")
        with contextlib.redirect_stdout(io.StringIO()):
            bundle = sign_sigstore_pb.Signature.read(path).bundle
        envelope = bundle.dsse_envelope
        if envelope is None or not envelope.signatures:
            raise SignatureError(f"{path.name} holds no DSSE envelope")
        if envelope.payload_type != _IN_TOTO_PAYLOAD:
            raise SignatureError(f"{path.name}: payload type {envelope.payload_type!r}")
        method, signer, hint, certs = _who(bundle.verification_material)
        resources, serialization = _statement(json.loads(envelope.payload))
    except SignatureError:
        raise
    except OSError as exc:
        raise SignatureError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    except Exception as exc:  # hostile bytes: JSON, pydantic, base64, DER errors alike
        raise SignatureError(f"{path.name} is not an OMS signature ({one_line(exc)})") from exc
    return SignedStatement(bundle, method, signer, hint, certs, resources, serialization)


def _who(material: Any) -> tuple[str, str, str | None, tuple[Any, ...]]:
    """(method, signer, key hint, certificates) from a bundle's verification material."""
    from cryptography import x509

    chain = getattr(material, "x509_certificate_chain", None)
    if chain is not None and chain.certificates:
        certs = tuple(x509.load_der_x509_certificate(c.raw_bytes) for c in chain.certificates)
        return "certificate", certs[0].subject.rfc4514_string(), None, certs
    single = getattr(material, "certificate", None)
    if single is not None and getattr(single, "raw_bytes", None):
        cert = x509.load_der_x509_certificate(single.raw_bytes)
        return "certificate", cert.subject.rfc4514_string(), None, (cert,)
    key = getattr(material, "public_key", None)
    hint = getattr(key, "hint", None) if key is not None else None
    if hint:
        return "key", f"sha256:{hint}", str(hint), ()
    return "key", "unknown key (no key hint)", None, ()


def _statement(payload: Any) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """The signed resources {name: (algorithm, hex digest)} and serialization parameters."""
    from model_signing._signing import signing

    if not isinstance(payload, dict) or payload.get("_type") != _STATEMENT_TYPE:
        raise ValueError("not an in-toto v1 statement")
    manifest = signing.dsse_payload_to_manifest(payload)  # checks the root digest
    resources = {
        rd.identifier: (rd.digest.algorithm, rd.digest.digest_hex)
        for rd in manifest.resource_descriptors()
    }
    return resources, dict(manifest.serialization_type)


def dsse_verifies(statement: SignedStatement, public_key: Any) -> bool:
    """True when the envelope's signature verifies with `public_key` (an EC key)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    envelope = statement.bundle.dsse_envelope
    try:
        algorithm = ec.ECDSA(sign_ec_key.get_ec_key_hash(public_key))
    except ValueError:
        return False
    for pae in (sign_sigstore_pb.pae, sign_sigstore_pb.pae_compat):
        try:
            public_key.verify(envelope.signatures[0].sig, pae(envelope.payload), algorithm)
            return True
        except (InvalidSignature, ValueError, TypeError):
            continue
    return False


def chain_problem(statement: SignedStatement, ca_certificates: Iterable[Path]) -> str | None:
    """Why the signing certificate does not chain to one of `ca_certificates` (None: it
    does, and may sign). The library's certificate verifier: OpenSSL path validation at
    the certificate's issuance time, key usage digital signature or code signing."""
    from model_signing._signing import sign_certificate, sign_sigstore_pb

    paths = list(ca_certificates)
    if not paths:
        return "no CA certificate is trusted"
    try:
        verifier = sign_certificate.Verifier(paths)
    except Exception as exc:
        raise UsageError(f"cannot load the CA certificates: {one_line(exc)}") from exc
    try:
        verifier.verify(sign_sigstore_pb.Signature(statement.bundle))
    except Exception as exc:
        return one_line(exc) or type(exc).__name__
    return None


def key_signer(
    private_key: Path, password: bytes | None, certificate: Path | None, chain: list[Path]
) -> tuple[Any, str]:
    """A signer for a PEM private key (with its certificate and chain, if given), and who it
    signs as: the key's fingerprint, or the certificate's subject. ValueError/TypeError/
    OSError as the key or certificate files are unusable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing._signing import sign_certificate, sign_ec_key

    key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey").removeprefix("_") or "this"
        raise ValueError(f"{kind} keys cannot sign OMS signatures (EC keys only)")
    if certificate is None:
        signer = sign_ec_key.Signer(Path(private_key), password)
        return signer, key_fingerprint(signer._private_key.public_key())
    signer = sign_certificate.Signer(Path(private_key), Path(certificate), list(chain))
    return signer, signer._signing_certificate.subject.rfc4514_string()


def pkcs11_signer(
    uri: str, modules: list[str], certificate: Path | None, chain: list[Path]
) -> tuple[Any, str]:
    """A signer for a key in a PKCS#11 token (ImportError without PyKCS11)."""
    from model_signing._signing import sign_pkcs11

    if certificate is None:
        signer = sign_pkcs11.Signer(uri, modules)
        return signer, key_fingerprint(signer.public_key())
    signer = sign_pkcs11.CertSigner(uri, Path(certificate), list(chain), module_paths=modules)
    return signer, signer._signing_certificate.subject.rfc4514_string()


def sign_files(
    directory: Path, files: list[str], signer: Any, out: Path
) -> dict[str, tuple[str, str]]:
    """Hash `files` (relative to `directory`), sign the statement with `signer` (a
    model_signing Signer), write the signature to `out`; returns what was signed."""
    from model_signing import hashing
    from model_signing._signing import signing

    config = (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=[Path(p) for p in IGNORED_BY_SIGNATURE], ignore_git_paths=True)
    )
    manifest = config.hash(directory, files_to_hash=[directory / f for f in files])
    signature = signer.sign(signing.Payload(manifest))
    data = signature.bundle.to_json()
    from sovcli.fsutil import atomic_write_bytes

    atomic_write_bytes(out, data.encode() if isinstance(data, str) else data)
    return {
        rd.identifier: (rd.digest.algorithm, rd.digest.digest_hex)
        for rd in manifest.resource_descriptors()
    }


def hash_files(directory: Path, files: list[str], serialization: dict[str, Any]) -> dict:
    """{identifier: (algorithm, hex)} of `files` hashed as `serialization` says (the
    signature's own method: per file or per shard, sha256/blake2/blake3)."""
    from model_signing import hashing

    method = serialization.get("method")
    algorithm = serialization.get("hash_type", "sha256")
    if method == "files":
        config = hashing.Config().use_file_serialization(hashing_algorithm=algorithm)
    elif method == "shards":
        config = hashing.Config().use_shard_serialization(
            hashing_algorithm=algorithm, shard_size=int(serialization["shard_size"])
        )
    else:
        raise SignatureError(f"unsupported OMS serialization {method!r}")
    manifest = config.hash(directory, files_to_hash=[directory / f for f in files])
    return {
        rd.identifier: (rd.digest.algorithm, rd.digest.digest_hex)
        for rd in manifest.resource_descriptors()
    }


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, at most 300 characters."""
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")
