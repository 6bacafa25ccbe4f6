"""The ML-BOM of an installed model: CycloneDX 1.6 JSON, through `cyclonedx-python-lib`.

One `machine-learning-model` component for the model (its GGUF's sha256, licence, and what
the GGUF says: architecture, parameters, quantization, context length) holding a `file`
component per file with its hash; its pedigree is the provenance chain the manifest records
(the publisher's repository and commit, or the package and version; the converter and the
quantizer with their versions; the bundle it was carried in), and its signature status is a
set of properties. Property names are namespaced `sovcli:`.
"""

from __future__ import annotations

import json
from typing import Any

from sovcli import __version__
from sovcli.errors import IntegrityError
from sovcli.governance.identity import model_digest
from sovcli.store.model import InstalledModel

SPEC_VERSION = "1.6"
PROPERTY_PREFIX = "sovcli:"


def build_sbom(model: InstalledModel, signature: Any = None) -> Any:
    """The `cyclonedx.model.bom.Bom` of `model`; `signature` a SignatureStatus (or None)."""
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType

    tool = Component(
        type=ComponentType.APPLICATION,
        name="sovcli",
        version=__version__,
        bom_ref="tool:sovcli",
    )
    bom = Bom()
    bom.metadata.tools.components.add(tool)
    bom.metadata.properties.add(_property("generator", f"sovcli {__version__}"))
    bom.components.add(_model_component(model, signature))
    return bom


def sbom_json(model: InstalledModel, signature: Any = None) -> str:
    """The ML-BOM of `model` as CycloneDX 1.6 JSON text (checked against the 1.6 schema)."""
    from cyclonedx.output.json import JsonV1Dot6

    text = JsonV1Dot6(build_sbom(model, signature)).output_as_string(indent=2)
    problem = validation_problem(text)
    if problem:  # a bug of ours, never the user's input: say so plainly
        raise IntegrityError(f"the ML-BOM of {model.ref} does not validate: {problem}")
    return text + "\n"


def validation_problem(text: str) -> str | None:
    """Why `text` is not valid CycloneDX 1.6 JSON (the library's strict validator), or None."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return None if error is None else str(error)[:500]


def _model_component(model: InstalledModel, signature: Any) -> Any:
    from cyclonedx.model.component import Component, ComponentType

    manifest = model.manifest
    digest = model_digest(model)
    files = [_file_component(model, record) for record in manifest.get("files", []) or []]
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=model.name,
        version=model.tag,
        bom_ref=f"model:{model.ref}",
        description=manifest.get("description") or manifest.get("model_name"),
        hashes=[_sha256(digest.removeprefix("sha256:"))] if digest else [],
        licenses=_licenses(manifest.get("license")),
        purl=_purl(manifest.get("source") or {}),
        properties=_model_properties(model, signature),
        pedigree=_pedigree(manifest),
        external_references=_references(manifest.get("source") or {}),
        components=files,
    )


def _file_component(model: InstalledModel, record: dict[str, Any]) -> Any:
    from cyclonedx.model.component import Component, ComponentType

    return Component(
        type=ComponentType.FILE,
        name=str(record["path"]),
        bom_ref=f"file:{model.ref}/{record['path']}",
        hashes=[_sha256(str(record["sha256"]))],
        properties=[_property("size", record.get("size"))],
    )


def _sha256(hex_digest: str) -> Any:
    from cyclonedx.model import HashAlgorithm, HashType

    return HashType(alg=HashAlgorithm.SHA_256, content=hex_digest)


def _property(name: str, value: Any) -> Any:
    from cyclonedx.model import Property

    return Property(name=PROPERTY_PREFIX + name, value=_text(value))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _licenses(value: Any) -> list[Any]:
    if not isinstance(value, str) or not value.strip():
        return []
    from cyclonedx.contrib.license.factories import LicenseFactory

    return [LicenseFactory().make_from_string(value.strip())]


def _model_properties(model: InstalledModel, signature: Any) -> list[Any]:
    manifest = model.manifest
    keys = (
        "architecture",
        "model_name",
        "parameter_count",
        "context_length",
        "quantization",
        "file_type",
        "tensor_count",
        "total_size",
        "created_at",
        "sovcli_version",
        "llama_cpp_version",
    )
    props = [_property(f"model:{k}", manifest[k]) for k in keys if manifest.get(k) is not None]
    props.append(_property("model:format", manifest.get("format") or "gguf"))
    props.append(_property("model:gguf", manifest.get("gguf")))
    if model.manifest_sha256:
        props.append(_property("manifest:sha256", model.manifest_sha256))
    props += _source_properties(manifest.get("source") or {})
    props += _conversion_properties(manifest.get("conversion"))
    props += _signature_properties(signature)
    return props


def _source_properties(source: dict[str, Any], prefix: str = "source") -> list[Any]:
    """The provenance as properties; a bundle's original source follows under `origin`."""
    if not isinstance(source, dict):
        return []
    keys = ("kind", "repo", "revision", "commit", "endpoint", "package", "version", "member")
    keys += ("path", "bundle", "format", "from", "original_created_at")
    props = [_property(f"{prefix}:{k}", source[k]) for k in keys if source.get(k) is not None]
    original = source.get("original_source")
    if isinstance(original, dict) and prefix.count(":") < 4:
        props += _source_properties(original, f"{prefix}:origin")
    return props


def _conversion_properties(conversion: Any) -> list[Any]:
    if not isinstance(conversion, dict):
        return []
    converter = conversion.get("converter") or {}
    picks = {
        "converter": converter.get("name") if isinstance(converter, dict) else converter,
        "converter_version": converter.get("sovcli_version")
        if isinstance(converter, dict)
        else None,
        "quantizer": conversion.get("llama_cpp"),
        "outtype": conversion.get("outtype"),
        "quant_type": conversion.get("quant_type"),
        "imatrix_sha256": conversion.get("imatrix_sha256"),
        "source_architecture": conversion.get("architecture"),
    }
    return [_property(f"conversion:{k}", v) for k, v in picks.items() if v is not None]


def _signature_properties(signature: Any) -> list[Any]:
    if signature is None:
        return [_property("signature:state", "not checked")]
    props = [_property("signature:state", signature.state)]
    for key in ("signer", "method", "detail"):
        value = getattr(signature, key, None)
        if value:
            props.append(_property(f"signature:{key}", value))
    props.append(_property("signature:format", "OpenSSF Model Signing (OMS), model.sig"))
    return props


def _purl(source: dict[str, Any]) -> Any:
    """The package URL of where the model's weights come from (the original source for a
    bundle), or None."""
    from packageurl import PackageURL

    while source.get("kind") == "bundle" and isinstance(source.get("original_source"), dict):
        source = source["original_source"]
    kind = source.get("kind")
    if kind == "hf" and isinstance(source.get("repo"), str) and "/" in source["repo"]:
        namespace, name = source["repo"].split("/", 1)
        version = source.get("commit") or source.get("revision")
        return PackageURL("huggingface", namespace, name, version and str(version))
    if kind == "pypi" and source.get("package"):
        version = source.get("version")
        return PackageURL("pypi", None, str(source["package"]), version and str(version))
    return None


def _pedigree(manifest: dict[str, Any]) -> Any:
    """Ancestors: the publisher's artefact (repository at a commit, or package at a version)
    that sovcli fetched, converted or carried; notes: the chain in one paragraph."""
    from cyclonedx.model.component import Component, ComponentType, Pedigree

    source = manifest.get("source") or {}
    chain = _chain(source, manifest.get("conversion"))
    purl = _purl(source)
    ancestors = []
    if purl is not None:
        ancestors.append(
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL
                if purl.type == "huggingface"
                else ComponentType.LIBRARY,
                name=purl.name,
                group=purl.namespace,
                version=purl.version,
                purl=purl,
                bom_ref=f"origin:{purl.to_string()}",
            )
        )
    return Pedigree(ancestors=ancestors, notes="; ".join(chain) or None)


def _chain(source: dict[str, Any], conversion: Any) -> list[str]:
    """The provenance steps, oldest first: origin, conversion, bundles it was carried in."""
    carried: list[str] = []
    while isinstance(source, dict) and source.get("kind") == "bundle":
        carried.append(f"carried in bundle {source.get('bundle')}")
        source = source.get("original_source") or {}
    steps: list[str] = []
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind == "hf":
        steps.append(f"fetched from {source.get('repo')} at commit {source.get('commit')}")
    elif kind == "pypi":
        steps.append(f"fetched from PyPI {source.get('package')}=={source.get('version')}")
    elif kind:
        steps.append(f"{kind} {source.get('path') or source.get('from') or ''}".strip())
    if isinstance(conversion, dict):
        converter = conversion.get("converter") or {}
        name = converter.get("name") if isinstance(converter, dict) else converter
        version = converter.get("sovcli_version") if isinstance(converter, dict) else None
        steps.append(
            f"converted by {name} {version or ''}".strip()
            + f" to {conversion.get('outtype')}, quantized to {conversion.get('quant_type')} "
            f"by {conversion.get('llama_cpp')}"
        )
    return steps + carried[::-1]


def _references(source: dict[str, Any]) -> list[Any]:
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri

    while source.get("kind") == "bundle" and isinstance(source.get("original_source"), dict):
        source = source["original_source"]
    refs = []
    if source.get("kind") == "hf" and source.get("repo"):
        endpoint = str(source.get("endpoint") or "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/{source['repo']}"
        if source.get("commit"):
            url += f"/tree/{source['commit']}"
        refs.append(ExternalReference(type=ExternalReferenceType.VCS, url=XsUri(url)))
    if source.get("kind") == "pypi" and source.get("package"):
        url = f"https://pypi.org/project/{source['package']}/{source.get('version') or ''}"
        refs.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url)))
    return refs
