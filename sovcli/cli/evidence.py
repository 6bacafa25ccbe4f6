"""CLI: `sovcli sbom` (the CycloneDX 1.6 ML-BOM of a model) and `sovcli attest` (the evidence
pack for an auditor)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption, ModelArgument, QuietOption
from sovcli.cli.sign import TrustCaOption, TrustKeyOption, store_model

SbomOutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write the ML-BOM to this file (else stdout).", show_default=False
    ),
]
PackOutputOption = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="A new or empty folder for the evidence pack.", show_default=False
    ),
]


def sbom_command(
    model: ModelArgument,
    output: SbomOutputOption = None,
    key: TrustKeyOption = None,
    ca: TrustCaOption = None,
    quiet: QuietOption = False,
) -> None:
    """Write a model's ML-BOM: CycloneDX 1.6 JSON, validated against the schema.

    The model is a machine-learning-model component with its files' hashes, licence,
    architecture, parameters, quantization, provenance chain (pedigree) and signature status
    (checked against --key/--ca and the site policy's trust anchors).

    \b
    Examples:
      sovcli sbom smollm2-135m
      sovcli sbom smollm2-135m -o smollm2-135m.cdx.json --key site-key.pub
    """
    from sovcli.cli.output import log
    from sovcli.cli.progress import make_progress
    from sovcli.cli.sign import trust_anchors
    from sovcli.fsutil import atomic_write_text
    from sovcli.governance.sbom import sbom_json
    from sovcli.governance.signing import verify_installed

    found = store_model(model)
    anchors = trust_anchors(key, ca)
    with make_progress(quiet) as progress:
        signature = verify_installed(found, anchors, progress=progress)
    text = sbom_json(found, signature)
    if output is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(output, text)
    log(f"wrote the ML-BOM of {found.ref} to {output} (CycloneDX 1.6, signature {signature.state})")


def attest_command(
    model: ModelArgument,
    output: PackOutputOption,
    key: TrustKeyOption = None,
    ca: TrustCaOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write the evidence pack of a model for an auditor, into a new or empty folder.

    The pack holds the manifest, the signature and its verification result, the ML-BOM,
    the policy in force and its sha256, the audit chain's head with this model's record
    counts, the sovcli and llama.cpp versions, summary.md (start there) and SHA256SUMS.

    \b
    Examples:
      sovcli attest smollm2-135m -o evidence-smollm2
      sovcli attest smollm2-135m -o /media/audit/2026-11 --key site-key.pub
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.cli.sign import trust_anchors
    from sovcli.governance.attest import build_evidence, check_pack_folder, write_pack
    from sovcli.governance.signing import TrustAnchors

    check_pack_folder(output)
    found = store_model(model)
    given = TrustAnchors(tuple(key or ()), tuple(ca or ()))
    trust_anchors(key, ca)  # a malformed policy stops here, before any work
    with make_progress(quiet) as progress:
        pack = build_evidence(found, given, progress)
    folder = write_pack(pack, output)
    if json_output:
        print_json({"model": found.ref, "folder": str(folder), "files": sorted(pack)})
        return
    log(f"wrote the evidence pack of {found.ref} to {folder} ({len(pack)} files)")
    log(f"start with {folder / 'summary.md'}")


COMMANDS = {"sbom": sbom_command, "attest": attest_command}
GROUPS: dict[str, Any] = {}
