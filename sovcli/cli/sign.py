"""CLI: `sovcli sign` (an OMS signature beside a model), and the trust options and signature
lines that `sovcli verify` adds to its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption, ModelArgument, QuietOption

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        metavar="KEY.pem",
        help="Your EC private key (PEM) to sign with.",
        show_default=False,
    ),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        metavar="FILE",
        help="File whose first line is the key's password.",
        show_default=False,
    ),
]
CertOption = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        metavar="CERT.pem",
        help="The signing certificate (PEM) of that key: your PKI.",
        show_default=False,
    ),
]
ChainOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--chain",
        metavar="CA.pem",
        help="Intermediate CA certificates (PEM), repeatable.",
        show_default=False,
    ),
]
Pkcs11UriOption = Annotated[
    str | None,
    typer.Option(
        "--pkcs11-uri",
        metavar="URI",
        help="Sign with a key in an HSM/token (RFC 7512 URI, needs sovcli[pkcs11]).",
        show_default=False,
    ),
]
Pkcs11ModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--pkcs11-module-dir",
        metavar="DIR",
        help="Where to look for the URI's module-name (repeatable).",
        show_default=False,
    ),
]
TrustKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--key",
        metavar="PUB.pem",
        help="A trusted public key (PEM), repeatable: the signature must be by one of them.",
        show_default=False,
    ),
]
TrustCaOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--ca",
        metavar="CA.pem",
        help="A trusted CA certificate (PEM), repeatable: the signer's must chain to one.",
        show_default=False,
    ),
]


def sign_command(
    model: ModelArgument,
    key: KeyOption = None,
    password_file: PasswordFileOption = None,
    cert: CertOption = None,
    chain: ChainOption = None,
    pkcs11_uri: Pkcs11UriOption = None,
    pkcs11_module_dir: Pkcs11ModuleOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Sign an installed model: writes an OMS signature (model.sig) beside its files.

    The signature is the OpenSSF Model Signing format: the `model_signing` CLI verifies it,
    and it travels in `sovcli export` bundles. Keyless Sigstore signing needs the network
    and is not offered.

    \b
    Examples:
      sovcli sign smollm2-135m --key site-key.pem
      sovcli sign smollm2-135m --key leaf.pem --cert leaf.crt --chain issuing-ca.crt
      sovcli sign smollm2-135m --pkcs11-uri \\
        'pkcs11:token=site;object=model-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sovcli/pin'
      sovcli verify smollm2-135m --key site-key.pub
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.governance.signing import SIGNATURE_FILE, sign_model

    signing_key = _signing_key(key, password_file, cert, chain, pkcs11_uri, pkcs11_module_dir)
    found = store_model(model, "sign")
    with make_progress(quiet) as progress:
        status = sign_model(found, signing_key, progress=progress)
    if json_output:
        print_json(
            {"model": found.ref, "signature": str(found.directory / SIGNATURE_FILE)}
            | status.as_dict()
        )
        return
    log(f"signed {found.ref} ({len(status.files)} file(s)) as {status.signer}")
    log(f"signature: {found.directory / SIGNATURE_FILE}")


def store_model(ref: str, action: str | None = None) -> Any:
    """The installed model `ref` names (the policy asked about `action`); a .gguf outside the
    store has no manifest to sign or describe (UsageError)."""
    from sovcli.errors import UsageError
    from sovcli.resolve import require_installed

    model = require_installed(ref, action)
    if not model.manifest.get("files"):
        raise UsageError(
            f"{ref} is a file outside the store: it has no manifest to sign or describe",
            hint=f"Import it first (`sovcli import {ref}`), then use the store's model.",
        )
    return model


def _signing_key(
    key: Path | None,
    password_file: Path | None,
    cert: Path | None,
    chain: list[Path] | None,
    pkcs11_uri: str | None,
    pkcs11_module_dir: list[str] | None,
) -> Any:
    """The SigningKey the options describe (UsageError when they do not fit together)."""
    from sovcli.errors import UsageError
    from sovcli.governance.signing import SigningKey

    if (key is None) == (pkcs11_uri is None):
        raise UsageError(
            "give one of --key KEY.pem or --pkcs11-uri URI",
            hint="`sovcli sign MODEL --key KEY.pem` signs with your own EC key.",
        )
    if chain and cert is None:
        raise UsageError("--chain needs --cert (the certificate the chain leads to)")
    return SigningKey(
        private_key=key,
        password=_password(password_file),
        certificate=cert,
        chain=tuple(chain or ()),
        pkcs11_uri=pkcs11_uri,
        pkcs11_modules=tuple(pkcs11_module_dir or ()),
    )


def _password(path: Path | None) -> str | None:
    """The first line of `path` (a key's password), or None."""
    if path is None:
        return None
    from sovcli.errors import UsageError

    try:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the password file {path}: {exc}") from exc


# --------------------------------------------------------------------------- for `verify`


def trust_anchors(keys: list[Path] | None, cas: list[Path] | None) -> Any:
    """The anchors `verify` checks against: --key/--ca, plus the site policy's anchors."""
    from sovcli.governance.policy import current_policy
    from sovcli.governance.signing import TrustAnchors

    given = TrustAnchors(tuple(keys or ()), tuple(cas or ()))
    policy = current_policy()
    return given.merged(getattr(policy, "trust_anchors", None))


def add_signatures(reports: list[dict[str, Any]], models: list[Any], anchors: Any) -> None:
    """Add `signature` (state, signer, method, detail) to each store model's verify report.

    Files that just verified against the manifest are not hashed again.
    """
    from sovcli.governance.signing import verify_installed

    by_ref = {m.ref: m for m in models if m.manifest.get("files")}
    for report in reports:
        model = by_ref.get(report["model"])
        if model is None or report.get("manifest") is False:
            continue
        status = verify_installed(model, anchors, files_verified=report["ok"])
        report["signature"] = status.as_dict()


def signature_line(report: dict[str, Any]) -> str | None:
    """`MODEL  signature STATE (signer; detail)` for the text report, or None."""
    sig = report.get("signature")
    if not sig:
        return None
    state = sig["state"] if sig["state"] in ("ok", "absent") else sig["state"].upper()
    extra = "; ".join(x for x in (sig.get("signer") and f"by {sig['signer']}", sig["detail"]) if x)
    return f"{report['model']}  signature {state}" + (f" ({extra})" if extra else "")


def raise_on_signatures(reports: list[dict[str, Any]], strict: bool) -> None:
    """SignatureError for any invalid signature; with `strict` (trust anchors were given on
    the command line) also for absent and untrusted ones."""
    from sovcli.errors import SignatureError

    bad = [
        r
        for r in reports
        if r.get("signature")
        and (r["signature"]["state"] == "invalid" or (strict and r["signature"]["state"] != "ok"))
    ]
    if bad:
        first = bad[0]["signature"]
        raise SignatureError(
            f"{bad[0]['model']}: signature {first['state']}"
            + (f": {first['detail']}" if first["detail"] else "")
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
            hint="Do not use the model; get it again from its signer, or re-sign it if you "
            "are the signer and the files are the ones you meant.",
        )


COMMANDS = {"sign": sign_command}
GROUPS: dict[str, Any] = {}
