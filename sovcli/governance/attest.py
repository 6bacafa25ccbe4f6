"""The evidence pack an auditor asks for (`sovcli attest MODEL -o DIR`).

One folder, written whole or not at all (assembled beside DIR, then renamed into place):

    summary.md           what follows, readable: model, files, signature, policy, audit, versions
    manifest.json        the model's provenance manifest, as stored
    model.sig            the OMS signature (when the model has one)
    verification.json    the files re-hashed against the manifest, and the signature's check
    sbom.json            the CycloneDX 1.6 ML-BOM
    policy.json          the site policy in force (path, sha256, rules) or "no policy"
    policy.toml          a copy of that policy file (when there is one)
    audit.json           the audit chain's head, whether it verifies, and this model's counts
    versions.json        sovcli, llama.cpp, model-signing, cyclonedx-python-lib, Python, OS
    SHA256SUMS           the sha256 of every file above (`sha256sum -c SHA256SUMS`)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sovcli import __version__, llamacpp
from sovcli.errors import UsageError
from sovcli.fsutil import fsync_dir, write_error
from sovcli.governance.identity import model_digest
from sovcli.governance.signing import SIGNATURE_FILE, TrustAnchors, verify_installed
from sovcli.progress import NULL_PROGRESS, Progress
from sovcli.store.layout import MANIFEST_NAME
from sovcli.store.model import InstalledModel

SUMS_FILE = "SHA256SUMS"


def build_evidence(
    model: InstalledModel, anchors: TrustAnchors, progress: Progress | None = None
) -> dict[str, bytes]:
    """The evidence pack of `model` as {file name: content}: files re-hashed, signature
    checked against `anchors` (and the policy's), ML-BOM, policy, audit summary, versions."""
    from sovcli.governance.audit import chain_summary
    from sovcli.governance.policy import current_policy, describe_policy
    from sovcli.governance.sbom import sbom_json
    from sovcli.store.verify import verify

    progress = progress or NULL_PROGRESS
    policy = current_policy()
    anchors = anchors.merged(getattr(policy, "trust_anchors", None))
    files_report = verify(model, progress)
    signature = verify_installed(model, anchors, files_verified=files_report["ok"])
    digest = model_digest(model)
    verification = {
        "model": model.ref,
        "model_digest": digest,
        "files_ok": files_report["ok"],
        "files": files_report["files"],
        "signature": signature.as_dict(),
        "trust_anchors": {
            "public_keys": [str(p) for p in anchors.public_keys],
            "ca_certificates": [str(p) for p in anchors.ca_certificates],
        },
    }
    policy_info = describe_policy()
    pack: dict[str, bytes] = {
        MANIFEST_NAME: (model.directory / MANIFEST_NAME).read_bytes(),
        "verification.json": _json(verification),
        "sbom.json": sbom_json(model, signature).encode(),
        "policy.json": _json(policy_info),
        "audit.json": _json(chain_summary(digest)),
        "versions.json": _json(versions()),
    }
    if (model.directory / SIGNATURE_FILE).is_file():
        pack[SIGNATURE_FILE] = (model.directory / SIGNATURE_FILE).read_bytes()
    if policy is not None:
        pack["policy.toml"] = Path(policy.path).read_bytes()
    pack["summary.md"] = summary_markdown(model, pack).encode()
    pack[SUMS_FILE] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(pack.items())
    ).encode()
    return pack


def versions() -> dict[str, Any]:
    """The versions of everything that made or checks this evidence."""
    from importlib import metadata

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "sovcli": __version__,
        "llama_cpp_python": llamacpp.version(),
        "model_signing": dist("model-signing"),
        "cyclonedx_python_lib": dist("cyclonedx-python-lib"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_pack(pack: dict[str, bytes], out: Path) -> Path:
    """Write `pack` as the folder `out` (new, or empty): assembled in a hidden sibling folder
    and renamed into place, so `out` is never half-written. UsageError if `out` has files."""
    out = check_pack_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise write_error(exc, out) from exc
    try:
        for name, data in pack.items():
            with (work / name).open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(work, 0o755)  # a folder to hand over; mkdtemp made it 0700
        fsync_dir(work)
        os.replace(work, out)  # onto a missing or empty folder
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise write_error(exc, out) from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def check_pack_folder(out: Path) -> Path:
    """`out` if it is a new or empty folder; UsageError (with a hint) otherwise."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"{out} exists and is not an empty folder; the evidence pack is not written there",
            hint="Give a new folder (e.g. -o evidence-$(date +%F)), or empty that one first.",
        )
    return out


def _json(data: Any) -> bytes:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (text + "\n").encode()


def summary_markdown(model: InstalledModel, pack: dict[str, bytes]) -> str:
    """The auditor's one-page reading of the pack (Markdown)."""
    verification = json.loads(pack["verification.json"])
    policy = json.loads(pack["policy.json"])
    audit = json.loads(pack["audit.json"])
    versions_ = json.loads(pack["versions.json"])
    manifest = model.manifest
    sig = verification["signature"]
    lines = [
        f"# Evidence pack: {model.ref}",
        "",
        f"Model digest (sha256 of the GGUF): `{verification['model_digest']}`  ",
        f"Made by sovcli {versions_['sovcli']} on {_now()}.",
        "",
        "## 1. Files",
        "",
        "| file | size | sha256 | check |",
        "| --- | ---: | --- | --- |",
    ]
    sizes = {r["path"]: r.get("size") for r in manifest.get("files", [])}
    hashes = {r["path"]: r.get("sha256") for r in manifest.get("files", [])}
    for entry in verification["files"]:
        path = entry["path"]
        lines.append(f"| `{path}` | {sizes.get(path)} | `{hashes.get(path)}` | {entry['status']} |")
    lines += [
        "",
        "All files match the manifest." if verification["files_ok"] else "**Files FAIL.**",
        "",
        "## 2. Signature (OpenSSF Model Signing)",
        "",
        f"- State: **{sig['state']}**",
        f"- Signer: {sig.get('signer') or '-'} ({sig.get('method') or '-'})",
        f"- Detail: {sig.get('detail') or '-'}",
        f"- Trusted keys: {_listing(verification['trust_anchors']['public_keys'])}",
        f"- Trusted CAs: {_listing(verification['trust_anchors']['ca_certificates'])}",
        "- Check again: `model_signing verify key MODEL_DIR --signature model.sig "
        "--public_key KEY.pub` (or `sovcli verify MODEL --key KEY.pub`).",
        "",
        "## 3. Provenance and ML-BOM",
        "",
        f"- Source: {_source_text(manifest.get('source') or {})}",
        f"- Licence: {manifest.get('license') or '-'}",
        f"- Architecture: {manifest.get('architecture') or '-'}, parameters: "
        f"{manifest.get('parameter_count') or '-'}, quantization: "
        f"{manifest.get('quantization') or '-'}",
        f"- Converted: {'yes (see sbom.json pedigree)' if manifest.get('conversion') else 'no'}",
        "- `sbom.json`: CycloneDX 1.6, validated against the schema when written.",
        "",
        "## 4. Site policy",
        "",
    ]
    if policy.get("in_force"):
        lines += [
            f"- File: `{policy['path']}` (copied as `policy.toml`)",
            f"- sha256: `{policy['sha256']}`",
            f"- Rules: `{json.dumps(policy.get('rules'), sort_keys=True)}`",
        ]
    else:
        lines.append(f"- No policy in force (looked at `{policy.get('looked_at')}`).")
    head = audit.get("head") or {}
    lines += [
        "",
        "## 5. Audit trail",
        "",
        f"- Trail: `{audit.get('path')}` ({'on' if audit.get('enabled') else 'OFF'})",
        f"- Chain verifies: {audit.get('verified')}; records: {audit.get('records')}",
        f"- Head: seq {head.get('seq')}, hash `{head.get('hash')}`",
        f"- Records about this model: {audit.get('model_records', 0)} "
        f"{json.dumps(audit.get('events') or {}, sort_keys=True)}",
        "",
        "## 6. Versions",
        "",
    ]
    lines += [f"- {name}: {value}" for name, value in versions_.items()]
    lines += [
        "",
        "## Files in this pack",
        "",
        "Check them with `sha256sum -c SHA256SUMS`.",
        "",
    ]
    lines += [f"- `{name}`" for name in sorted({*pack, "summary.md", SUMS_FILE})]
    return "\n".join(lines) + "\n"


def _now() -> str:
    """Now, UTC, ISO 8601."""
    from sovcli.store.manifest import utc_now

    return utc_now()


def _listing(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items) if items else "none given"


def _source_text(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "bundle":
        return f"bundle `{source.get('bundle')}`, originally " + _source_text(
            source.get("original_source") or {}
        )
    if kind == "hf":
        return f"`{source.get('repo')}` at commit `{source.get('commit')}`"
    if kind == "pypi":
        return f"PyPI `{source.get('package')}=={source.get('version')}`"
    return f"{kind or 'unknown'} {source.get('path') or ''}".strip()
