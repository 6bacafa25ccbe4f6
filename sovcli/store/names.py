"""Model names and tags: parsing references and rejecting anything that could escape the store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sovcli.errors import InvalidNameError

DEFAULT_HUB_QUANT = "Q4_K_M"
"""The quantization chosen in a hub repo (and made from a checkpoint) when none is named."""

# Matched whole (`fullmatch`): `$` would also accept a trailing newline ("smollm2\n").
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_PARTS = 3
BUNDLE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
"""A reference ending so is an air-gap bundle (compressed ones too)."""

# Quantization tags as they appear in GGUF file names (longest first so Q4_K_M wins over Q4_K).
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"IQ[1-4]_(?:XXS|XS|S|M|NL)|IQ[1-4]_[A-Z]+|"
    r"Q[2-8]_K_(?:S|M|L|XL)|Q[2-8]_K|Q[4-8]_[01]|Q4_0_[48]_[48]|"
    r"TQ[12]_0|MXFP4|BF16|F16|F32|FP16|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SHARD_RE = re.compile(r"(?P<stem>.+)-(?P<idx>\d{5})-of-(?P<total>\d{5})\.gguf", re.IGNORECASE)


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` for an error message: control characters escaped, cut at `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_name(name: str) -> str:
    """`name` if it is a safe store name (parts joined by '/'); else InvalidNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("empty model name")
    if name.startswith("/") or "\\" in name or _CONTROL.search(name):
        raise InvalidNameError(f"invalid model name {shown(name)}: absolute or odd path")
    parts = name.split("/")
    if len(parts) > MAX_NAME_PARTS:
        raise InvalidNameError(f"invalid model name {shown(name)}: too many '/' parts")
    for part in parts:
        if part in ("", ".", "..") or not _PART.fullmatch(part) or ".." in part:
            raise InvalidNameError(f"invalid model name {shown(name)}: bad part {shown(part)}")
    return name


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a safe tag (e.g. Q4_K_M), else raise InvalidNameError."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag) or ".." in tag:
        raise InvalidNameError(f"invalid model tag {shown(tag)}")
    return tag


def validate_file_name(path: str) -> str:
    """A relative file path inside a model directory or a repo: no traversal, no absolute path,
    no control character (a newline or an escape sequence in a name shown to a user)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise InvalidNameError(f"invalid file name {shown(path)}")
    if _CONTROL.search(path):
        raise InvalidNameError(f"invalid file name {shown(path)}: control character")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidNameError(f"invalid file name {shown(path)}")
    return path


def normalize_tag(tag: str) -> str:
    """Quant tags are upper-case (`q8_0` -> `Q8_0`); other tags are kept as given."""
    validate_tag(tag)
    upper = tag.upper()
    return upper if _QUANT_RE.fullmatch(upper) else tag


def quant_from_filename(filename: str) -> str | None:
    """The quantization tag in a GGUF file name (`...-Q4_K_M.gguf` -> `Q4_K_M`), upper-cased."""
    base = filename.rsplit("/", 1)[-1]
    shard = _SHARD_RE.fullmatch(base)
    if shard:
        base = shard.group("stem") + ".gguf"
    found = _QUANT_RE.findall(base)
    if not found:
        return None
    tag = found[-1].upper()
    return {"FP16": "F16", "FP32": "F32"}.get(tag, tag)


def shard_info(filename: str) -> tuple[str, int, int] | None:
    """`(stem, index, total)` for a split GGUF shard name (`x-00001-of-00003.gguf`), else None."""
    m = _SHARD_RE.fullmatch(filename.rsplit("/", 1)[-1])
    if not m:
        return None
    return m.group("stem"), int(m.group("idx")), int(m.group("total"))


def shard_group(gguf: str, relpaths: list[str] | set[str]) -> list[str]:
    """The files llama.cpp reads for the model whose (first) file is `gguf`: its shards in
    order, those of them among `relpaths`, when it is a split GGUF; else just `[gguf]`."""
    info = shard_info(gguf)
    if info is None:
        return [gguf]
    stem, _index, total = info
    folder = gguf.rsplit("/", 1)[0] + "/" if "/" in gguf else ""
    names = [f"{folder}{stem}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]
    return [n for n in names if n in relpaths] or [gguf]


def slugify(text: str) -> str:
    """A safe single-part name derived from free text (a file stem)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower()
    slug = re.sub(r"\.{2,}", ".", slug)
    return slug[:128] or "model"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: `kind` is 'alias', 'hf', 'path', 'bundle' or 'name'."""

    kind: str
    name: str  # alias, store name or repo id ('' for paths and bundles)
    tag: str | None = None  # requested quant / tag
    file: str | None = None  # exact file in a hub repo
    path: str | None = None  # local path or bundle path


def parse_ref(ref: str) -> ModelRef:
    """Parse a user reference into a ModelRef. Raises InvalidNameError when malformed.

    Accepted: `alias`, `alias:TAG`, `org/repo:TAG` (installed), `hf:org/repo`,
    `hf:org/repo:QUANT`, `hf:org/repo/file.gguf`, `bundle:FILE.tar`, `./file.gguf`, `/abs/x.tar`.
    """
    ref = ref.strip(" ")  # spaces only: a newline or a tab makes the reference invalid
    if not ref:
        raise InvalidNameError("empty model reference")
    if ref.startswith("bundle:"):
        return ModelRef(kind="bundle", name="", path=ref[len("bundle:") :])
    looks_like_path = ref.startswith(("./", "../", "/", "~")) or (
        ref.lower().endswith((".gguf", *BUNDLE_SUFFIXES)) and not ref.startswith("hf:")
    )
    if looks_like_path:
        kind = "bundle" if ref.lower().endswith(BUNDLE_SUFFIXES) else "path"
        return ModelRef(kind=kind, name="", path=ref)
    if ref.startswith(("hf:", "hf.co/", "huggingface.co/")):
        body = ref.split(":", 1)[1] if ref.startswith("hf:") else ref.split("/", 1)[1]
        tag = None
        if ":" in body:
            body, tag = body.rsplit(":", 1)
            tag = normalize_tag(tag)
        parts = body.split("/")
        file = None
        if len(parts) > 2:
            file = "/".join(parts[2:])
            validate_file_name(file)
            if not file.lower().endswith(".gguf"):
                raise InvalidNameError(
                    f"invalid hub reference {shown(ref)}: a file must end in .gguf",
                    hint="Use hf:org/repo, hf:org/repo:Q4_K_M or hf:org/repo/file.gguf.",
                )
            if tag is None:
                tag = quant_from_filename(file)
        repo = "/".join(parts[:2])
        if len(parts) < 2:
            raise InvalidNameError(
                f"invalid hub reference {shown(ref)}: expected hf:org/repo",
                hint="Use hf:org/repo, hf:org/repo:Q4_K_M or hf:org/repo/file.gguf.",
            )
        validate_name(repo)
        return ModelRef(kind="hf", name=repo, tag=tag, file=file)
    name, tag = ref, None
    if ":" in ref:
        name, tag = ref.rsplit(":", 1)
        tag = normalize_tag(tag)
    validate_name(name)
    kind = "alias" if "/" not in name else "name"
    return ModelRef(kind=kind, name=name, tag=tag)
