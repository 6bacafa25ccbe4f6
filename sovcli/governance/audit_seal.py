"""Seals: the head of an audit chain signed with the site's key (EC or Ed25519 PEM).

A seal is a chain record (`audit_seal`) holding `sealed_seq` and `sealed_hash` (the record
just before it), the signer's `key_id` (sha256 of its public key, DER) and the signature over
`sovcli-audit-seal/1\\n<seq>\\n<hash>\\n`. The key type is the one sites use for model
signing (an EC P-256/P-384 key pair, as `model_signing sign key` takes), or Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sovcli.errors import AuditError

_EC_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
KEY_HINT = "Give a PEM key file: EC (P-256, P-384, P-521) or Ed25519, e.g. from openssl genpkey."


def seal_message(seq: int, digest: str) -> bytes:
    """The bytes a seal signs."""
    return f"sovcli-audit-seal/1\n{seq}\n{digest}\n".encode("ascii")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(
            f"cannot read the {what} {path}: {exc.strerror or exc}", hint=KEY_HINT
        ) from None


def load_private_key(path: Path) -> Any:
    """The signing key in PEM file `path` (AuditError naming the problem)."""
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise AuditError(
            f"the key {path} is encrypted",
            hint="Give an unencrypted PEM key (kept on the sealing host only).",
        ) from None
    except ValueError:
        raise AuditError(f"{path} is not a PEM private key", hint=KEY_HINT) from None
    _algorithm(key, path)
    return key


def load_public_key(path: Path) -> Any:
    """The public key in PEM file `path`: a public key or a certificate."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise AuditError(
                f"{path} is not a PEM public key or certificate", hint=KEY_HINT
            ) from None
    _algorithm(key, path)
    return key


def _algorithm(key: Any, path: Path | None = None) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    curve = getattr(getattr(key, "curve", None), "name", None)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and (
        curve in _EC_HASHES
    ):
        return f"ecdsa-{_EC_HASHES[curve].name}-{curve}"
    where = f" {path}" if path else ""
    raise AuditError(f"the key{where} is of a type seals do not use", hint=KEY_HINT)


def key_id(public_key: Any) -> str:
    """`sha256:<hex>` of the public key (DER SubjectPublicKeyInfo)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def seal_fields(private_key: Any, seq: int, digest: str) -> dict[str, Any]:
    """The fields of a seal over head (`seq`, `digest`)."""
    message = seal_message(seq, digest)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(message)
    else:
        chosen = _EC_HASHES[private_key.curve.name]()
        signature = private_key.sign(message, ec.ECDSA(chosen))
    return {
        "sealed_seq": seq,
        "sealed_hash": digest,
        "key_id": key_id(private_key.public_key()),
        "algorithm": _algorithm(private_key),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def check_seal(record: dict[str, Any], public_key: Any) -> str | None:
    """Why seal `record` does not verify with `public_key`, or None when it does."""
    if record.get("key_id") != key_id(public_key):
        return f"sealed by another key ({record.get('key_id')}), not by the key given"
    try:
        signature = base64.b64decode(str(record.get("signature")), validate=True)
        message = seal_message(int(record["sealed_seq"]), str(record["sealed_hash"]))
    except (ValueError, KeyError, TypeError):
        return "the seal's signature is not readable"
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            public_key.verify(signature, message, ec.ECDSA(_EC_HASHES[public_key.curve.name]()))
    except InvalidSignature:
        return "the seal's signature does not verify: the sealed head or the seal was changed"
    return None
