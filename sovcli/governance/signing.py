"""OMS model signatures (OpenSSF model-signing). INTERFACE STUB: the signing helper fills it in.

The signature is the file `SIGNATURE_FILE` in the model's store directory, covering the files
`identity.signed_files(manifest)` lists (the manifest itself is not signed: it is rebuilt on
import; its hashes are checked against the signed files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class SignatureStatus:
    """The result of checking a model's signature."""

    state: SignatureState
    signer: str | None = None  # key fingerprint or certificate subject
    method: str | None = None  # "key", "certificate", "pkcs11", "sigstore"
    detail: str = ""  # one line: why invalid/untrusted, or which file differs
    files: tuple[str, ...] = field(default_factory=tuple)


def verify_model(directory: Path, files: list[str], anchors: TrustAnchors) -> SignatureStatus:
    """Check the signature in `directory` over `files` against `anchors`."""
    if not (directory / SIGNATURE_FILE).is_file():
        return SignatureStatus("absent")
    raise NotImplementedError("filled in by the signing work")
