"""The model catalog: aliases -> sources in priority order, from `models.toml`.

The bundled catalog ships inside the package (`sovcli/models.toml`); a user catalog at
`$SOVCLI_CATALOG` or `~/.config/sovcli/models.toml` adds entries or replaces them whole.
Both are validated on load; an error names the file, the key and what is wrong.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli import paths
from sovcli.errors import CatalogError, ModelNotFoundError
from sovcli.store.names import (
    normalize_tag,
    quant_from_filename,
    shown,
    validate_file_name,
    validate_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Matched whole (`fullmatch`): a package is a name and a version a release, never a path, a URL,
# an option or a specifier, so pip can only ever download `name==version` from its index.
_PACKAGE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")  # PEP 508 names
_VERSION = re.compile(r"(?:\d+!)?\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")  # a branch, tag or commit

SOURCE_KINDS = ("hf", "pypi")
FORMATS = ("gguf", "safetensors")
_ENTRY_KEYS = {"description", "license", "gated", "default_quant", "verified", "note", "sources"}
_SOURCE_KEYS = {
    "hf": {
        "kind",
        "repo",
        "file",
        "files",
        "revision",
        "sha256",
        "size",
        "quant",
        "format",
        "note",
    },
    "pypi": {"kind", "package", "version", "member", "parts", "sha256", "size", "quant", "note"},
}


@dataclass(frozen=True)
class Source:
    """One place a model can be fetched from."""

    kind: str  # "hf" or "pypi"
    repo: str | None = None  # hf: org/repo
    file: str | None = None  # hf: exact GGUF file (first shard for split models)
    revision: str | None = None  # hf: branch, tag or pinned commit
    sha256: str | None = None  # pinned hash of `file` / `member`
    size: int | None = None
    quant: str | None = None  # the quantization this source provides (None: choose in repo)
    format: str = "gguf"  # "gguf" or "safetensors" (converted after download)
    package: str | None = None  # pypi
    version: str | None = None  # pypi
    member: str | None = None  # pypi: path of the GGUF inside the wheel
    # pypi, a GGUF split across several wheels: ((package, version, member), ...) concatenated
    parts: tuple[tuple[str, str, str], ...] = ()

    def describe(self) -> str:
        """A short human description, e.g. `hf:org/repo/file.gguf` or `pypi:pkg==1.0`."""
        if self.kind == "pypi":
            return f"pypi:{self.package}=={self.version}"
        text = f"hf:{self.repo}"
        if self.file:
            text += f"/{self.file}"
        if self.format != "gguf":
            text += f" ({self.format})"
        return text


@dataclass(frozen=True)
class CatalogEntry:
    """An alias and what it stands for."""

    alias: str
    description: str
    license: str | None
    gated: bool
    default_quant: str
    sources: tuple[Source, ...]
    verified: bool = True
    origin: str = ""  # the file it came from
    note: str | None = None

    def sources_for(self, quant: str | None) -> list[Source]:
        """Sources able to deliver `quant` (default quant when None), in priority order."""
        want = quant or self.default_quant
        out = []
        for src in self.sources:
            if src.format == "safetensors" or src.quant is None or src.quant == want:
                out.append(src)
        return out


@dataclass
class Catalog:
    """All aliases known (bundled + user)."""

    entries: dict[str, CatalogEntry] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def get(self, alias: str) -> CatalogEntry | None:
        """The entry for `alias`, or None."""
        return self.entries.get(alias)

    def pinned_sha256(self, name: str, tag: str) -> frozenset[str]:
        """The sha256 the catalog pins for alias `name`'s `tag` GGUF (empty: no pin, or not
        an alias). A model registered under that name and tag must be that file."""
        entry = self.entries.get(name)
        if entry is None:
            return frozenset()
        return frozenset(
            src.sha256
            for src in entry.sources
            if src.sha256
            and src.format == "gguf"
            and (src.quant or (quant_from_filename(src.file) if src.file else None)) == tag
        )

    def require(self, alias: str) -> CatalogEntry:
        """The entry for `alias`; ModelNotFoundError with close-name suggestions otherwise."""
        entry = self.entries.get(alias)
        if entry is not None:
            return entry
        close = self.suggestions(alias)
        hint = (
            f"Did you mean {' or '.join(close)}?"
            if close
            else "See `sovcli list --available`, or pull hf:org/repo or a .gguf path."
        )
        raise ModelNotFoundError(f"unknown model '{alias}'", hint=hint)

    def describe(self, installed: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """Every alias, sorted, as `sovcli list --available --json` prints it."""
        return [
            {
                "alias": alias,
                "default_quant": entry.default_quant,
                "license": entry.license,
                "gated": entry.gated,
                "verified": entry.verified,
                "installed": alias in installed,
                "description": entry.description,
                "sources": [s.describe() for s in entry.sources],
            }
            for alias, entry in sorted(self.entries.items())
        ]

    def suggestions(self, name: str) -> list[str]:
        """Aliases close to `name` (a typo), best first; at most three."""
        return close_names(name, list(self.entries))


def close_names(name: str, candidates: list[str], limit: int = 3) -> list[str]:
    """`candidates` that look like a typo of `name`, best first.

    Each candidate is compared whole, by its family (`smollm2` of `smollm2-135m`) and by
    prefix, so a misspelt or bare family name (`smolm2`, `qwen`) still finds the alias.
    """
    want = name.lower()
    scored = []
    for candidate in candidates:
        low = candidate.lower()
        family = low.split("-", 1)[0]
        score = max(
            difflib.SequenceMatcher(None, want, low).ratio(),
            difflib.SequenceMatcher(None, want, family).ratio() - 0.05,
            0.8 if len(want) >= 3 and low.startswith(want) else 0.0,
        )
        if score >= 0.75:
            scored.append((-score, candidate))
    return [candidate for _score, candidate in sorted(scored)[:limit]]


def bundled_catalog_path() -> Path:
    """The catalog that ships with sovcli (`sovcli/models.toml`)."""
    return Path(__file__).resolve().parents[1] / "models.toml"


def _fail(path: Path, key: str, what: str) -> CatalogError:
    return CatalogError(
        f"{path}: {key}: {what}",
        hint="Fix the entry (see docs/models-and-store.md for the schema).",
    )


def _check_type(
    path: Path, key: str, value: Any, kind: type | tuple[type, ...], label: str
) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(path, key, f"must be {label}, got {type(value).__name__}")


def _parse_source(path: Path, key: str, raw: Any) -> Source:
    if not isinstance(raw, dict):
        raise _fail(path, key, "must be a table")
    kind = raw.get("kind")
    if kind not in SOURCE_KINDS:
        raise _fail(path, f"{key}.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    unknown = set(raw) - _SOURCE_KEYS[kind]
    if unknown:
        raise _fail(path, f"{key}.{sorted(unknown)[0]}", f"unknown key for a {kind} source")
    for name in (
        "repo",
        "file",
        "revision",
        "sha256",
        "quant",
        "format",
        "package",
        "version",
        "member",
        "note",
    ):
        if name in raw:
            _check_type(path, f"{key}.{name}", raw[name], str, "a string")
    if "size" in raw:
        _check_type(path, f"{key}.size", raw["size"], int, "an integer")
    sha = raw.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise _fail(path, f"{key}.sha256", "must be 64 lower-case hex digits")
    quant = raw.get("quant")
    if quant is not None:
        try:
            quant = normalize_tag(quant)
        except Exception:
            raise _fail(path, f"{key}.quant", f"invalid quant {quant!r}") from None
    fmt = raw.get("format", "gguf")
    if fmt not in FORMATS:
        raise _fail(path, f"{key}.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if kind == "hf":
        repo = raw.get("repo")
        if not repo:
            raise _fail(path, f"{key}.repo", "missing (org/repo)")
        try:
            validate_name(repo)
        except Exception:
            raise _fail(path, f"{key}.repo", f"invalid repo id {repo!r}") from None
        if repo.count("/") != 1:
            raise _fail(path, f"{key}.repo", f"must be org/repo, got {repo!r}")
        revision = raw.get("revision")
        if revision is not None and (not _REVISION.fullmatch(revision) or ".." in revision):
            raise _fail(path, f"{key}.revision", f"invalid revision {shown(revision)}")
        file = raw.get("file")
        if file is not None:
            try:
                validate_file_name(file)
            except Exception:
                raise _fail(path, f"{key}.file", f"invalid file name {file!r}") from None
            if fmt == "gguf" and not file.lower().endswith(".gguf"):
                raise _fail(path, f"{key}.file", "a gguf source file must end in .gguf")
        return Source(
            kind="hf",
            repo=repo,
            file=file,
            revision=raw.get("revision"),
            sha256=sha,
            size=raw.get("size"),
            quant=quant,
            format=fmt,
        )
    parts = _parse_parts(path, key, raw.get("parts"))
    if parts and not sha:
        raise _fail(path, f"{key}.sha256", "required for a multi-part source (the assembled file)")
    for name in ("package", "version", "member"):
        if not raw.get(name) and not parts:
            raise _fail(
                path, f"{key}.{name}", "missing (pypi sources need package, version, member)"
            )
    member = raw.get("member") or parts[-1][2]
    package = raw.get("package") or parts[0][0]
    version = raw.get("version") or parts[0][1]
    _check_requirement(path, key, package, version, member)
    return Source(
        kind="pypi",
        package=package,
        version=version,
        member=member,
        parts=parts,
        sha256=sha,
        size=raw.get("size"),
        quant=quant,
    )


def _parse_parts(path: Path, key: str, raw: Any) -> tuple[tuple[str, str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise _fail(path, f"{key}.parts", "must be a non-empty array of {package, version, member}")
    out = []
    for i, item in enumerate(raw):
        where = f"{key}.parts[{i}]"
        if not isinstance(item, dict) or set(item) != {"package", "version", "member"}:
            raise _fail(path, where, "must have exactly package, version and member")
        for name in ("package", "version", "member"):
            _check_type(path, f"{where}.{name}", item[name], str, "a string")
        _check_requirement(path, where, item["package"], item["version"], item["member"])
        out.append((item["package"], item["version"], item["member"]))
    return tuple(out)


def is_package_name(text: str) -> bool:
    """True for a bare package name as on an index (PEP 508): no path, URL, option or extra."""
    return isinstance(text, str) and _PACKAGE.fullmatch(text) is not None


def is_release(text: str) -> bool:
    """True for an exact public release number (`1.0.2`, `2!1.0rc1`): no specifier, no URL."""
    return isinstance(text, str) and _VERSION.fullmatch(text) is not None


def _check_requirement(path: Path, key: str, package: str, version: str, member: str) -> None:
    """A pypi package is a bare name, its version a bare release, its member a path in the
    wheel: no local path, URL, pip option (`-e`), extra or version specifier gets to pip."""
    if not is_package_name(package):
        what = "a name on the index, not a path, URL or option"
        raise _fail(path, f"{key}.package", f"invalid package name {shown(package)} ({what})")
    if not is_release(version):
        what = "an exact release such as 1.0.2"
        raise _fail(path, f"{key}.version", f"invalid version {shown(version)} ({what})")
    try:
        validate_file_name(member)
    except Exception:
        raise _fail(path, f"{key}.member", f"invalid member path {shown(member)}") from None


def _parse_entry(path: Path, alias: str, raw: Any) -> CatalogEntry:
    key = f"models.{alias}"
    try:
        validate_name(alias)
    except Exception:
        raise _fail(path, key, "invalid alias (letters, digits, '.', '_', '-')") from None
    if "/" in alias:
        raise _fail(path, key, "an alias cannot contain '/'")
    if not isinstance(raw, dict):
        raise _fail(path, key, "must be a table")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise _fail(path, f"{key}.{sorted(unknown)[0]}", "unknown key")
    for name in ("description", "default_quant"):
        if name not in raw:
            raise _fail(path, f"{key}.{name}", "missing")
        _check_type(path, f"{key}.{name}", raw[name], str, "a string")
    for name in ("license", "note"):
        if name in raw:
            _check_type(path, f"{key}.{name}", raw[name], str, "a string")
    for name in ("gated", "verified"):
        if name in raw:
            _check_type(path, f"{key}.{name}", raw[name], bool, "true or false")
    try:
        default_quant = normalize_tag(raw["default_quant"])
    except Exception:
        raise _fail(
            path, f"{key}.default_quant", f"invalid quant {raw['default_quant']!r}"
        ) from None
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, list) or not sources_raw:
        raise _fail(path, f"{key}.sources", "must be a non-empty array of tables ([[...sources]])")
    sources = tuple(
        _parse_source(path, f"{key}.sources[{i}]", item) for i, item in enumerate(sources_raw)
    )
    return CatalogEntry(
        alias=alias,
        description=raw["description"],
        license=raw.get("license"),
        gated=bool(raw.get("gated", False)),
        default_quant=default_quant,
        sources=sources,
        verified=bool(raw.get("verified", True)),
        origin=str(path),
        note=raw.get("note"),
    )


def parse_catalog_file(path: Path) -> dict[str, CatalogEntry]:
    """Read and validate one catalog file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(data) - {"models"}
    if unknown:
        raise _fail(
            Path(path), sorted(unknown)[0], "unknown top-level key (expected [models.<alias>])"
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise _fail(Path(path), "models", "must be a table")
    return {alias: _parse_entry(Path(path), alias, raw) for alias, raw in models.items()}


def load_catalog() -> Catalog:
    """The bundled catalog with the user catalog (if any) laid over it."""
    catalog = Catalog()
    bundled = bundled_catalog_path()
    catalog.entries.update(parse_catalog_file(bundled))
    catalog.files.append(bundled)
    user = paths.user_catalog_path()
    if user.is_file():
        catalog.entries.update(parse_catalog_file(user))
        catalog.files.append(user)
    return catalog
