"""Fixtures shared by the governance tests (signing, policy, audit, evidence).

- `site_keys` / `rogue_keys`: EC P-256 key pairs (PEM files): the site's own, and one the
  site does not trust.
- `site_pki`: a small PKI (root CA -> intermediate CA -> code-signing leaf), PEM files.
- `smollm2_model`: this test's store (SOVCLI_HOME) with the real SmolLM2 model installed
  as `smollm2-135m:Q4_1` (hardlinked from the cache: never modify its files).
- `smollm2_copy`: the same model as a private copy, safe to tamper with (costs ~100 MB).
- `sovcli_cli(*args, env=...)`: the real `sovcli` command in a subprocess.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KeyPair:
    """A PEM private key and its PEM public key."""

    private: Path
    public: Path


def make_key_pair(directory: Path, name: str) -> KeyPair:
    """A new EC P-256 key pair written as `<name>.pem` and `<name>.pub` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


@pytest.fixture(scope="session")
def site_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The site's signing key pair (EC P-256)."""
    return make_key_pair(tmp_path_factory.mktemp("site-keys"), "site")


@pytest.fixture(scope="session")
def rogue_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A second key pair that no test trusts."""
    return make_key_pair(tmp_path_factory.mktemp("rogue-keys"), "rogue")


@dataclass(frozen=True)
class Pki:
    """A root CA, an intermediate CA and a code-signing leaf (key + certificate), as PEM."""

    root_cert: Path
    intermediate_cert: Path
    chain: Path  # the intermediate, as a signer passes it with --chain
    leaf_cert: Path
    leaf_key: Path
    subject: str  # the leaf's subject, RFC 4514


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Bank"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, leaf_name: str = "Model Signing") -> Pki:
    """A fresh root -> intermediate -> leaf PKI written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_name, inter_name, leaf = _name("Root CA"), _name("Issuing CA"), _name(leaf_name)
    root = _certificate(root_name, root_key, root_name, root_key, ca=True)
    inter = _certificate(inter_name, inter_key, root_name, root_key, ca=True)
    leaf_cert = _certificate(leaf, leaf_key, inter_name, inter_key, ca=False)
    pem = serialization.Encoding.PEM
    paths = {n: directory / n for n in ("root.crt", "issuing.crt", "leaf.crt", "leaf.pem")}
    paths["root.crt"].write_bytes(root.public_bytes(pem))
    paths["issuing.crt"].write_bytes(inter.public_bytes(pem))
    paths["leaf.crt"].write_bytes(leaf_cert.public_bytes(pem))
    paths["leaf.pem"].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(
        root_cert=paths["root.crt"],
        intermediate_cert=paths["issuing.crt"],
        chain=paths["issuing.crt"],
        leaf_cert=paths["leaf.crt"],
        leaf_key=paths["leaf.pem"],
        subject=leaf.rfc4514_string(),
    )


@pytest.fixture(scope="session")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The site's PKI: root CA, issuing CA, and a code-signing certificate with its key."""
    return make_pki(tmp_path_factory.mktemp("site-pki"))


@pytest.fixture
def smollm2_model(installed_smollm2):
    """The real SmolLM2 model installed in this test's store (hardlinked: do not modify)."""
    return installed_smollm2


@pytest.fixture
def smollm2_copy(smollm2_gguf: Path, smollm2_metadata: dict, isolated_env: Path):
    """The real SmolLM2 model installed as a private copy (`smollm2-135m:Q4_1`): tests may
    flip its bytes."""
    from sovcli.sources.local import import_gguf

    return import_gguf(
        smollm2_gguf,
        name="smollm2-135m",
        tag="Q4_1",
        link=False,
        meta=smollm2_metadata,
        license="apache-2.0",
    )


def run_sovcli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`sovcli ARGS` in a subprocess with this test's environment (plus `env`)."""
    full_env = {**os.environ, "SOVCLI_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sovcli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture
def sovcli_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`sovcli_cli(*args, env=None)`: the real command line in a subprocess."""
    return run_sovcli
