"""Created models: a base model's GGUF plus a preset (system prompt, parameters, template, stops).

`sovcli create NAME --from MODEL -f SPEC.toml` registers NAME as a model of its own: its
directory holds a hard link (a copy when impossible) of the base's GGUF and `preset.json`,
both listed with their sha256 in the manifest as usual, so `verify`, `sign` and `export`
treat it like any model and a bundle carries the preset. `preset.json` records where it
came from (the base's `name:tag`, its GGUF's sha256 and manifest's sha256) and the spec file
it was made from (its text and sha256).

A spec is TOML, checked strictly (an unknown key, a wrong type or a value out of range is a
one-line error naming the key):

    system = "You answer in one sentence."
    template = "..."          # a chat template (jinja) instead of the GGUF's
    stop = ["</answer>"]
    description = "..."
    [parameters]
    temperature = 0.2         # and top_p, top_k, min_p, repeat_penalty, presence_penalty,
    seed = 42                 # frequency_penalty, max_tokens, ctx

`PARAMETER_LIMITS` is the one table of ranges for sampling settings: the engine's chat
session (`/set`), the CLI options and `-o key value` use it too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sovcli import paths
from sovcli.errors import IntegrityError, StoreError, UsageError
from sovcli.fsutil import atomic_write_bytes
from sovcli.progress import Progress
from sovcli.store.hashing import sha256_file
from sovcli.store.layout import file_in
from sovcli.store.manifest import utc_now
from sovcli.store.model import InstalledModel
from sovcli.store.names import shard_group
from sovcli.store.registry import FileToInstall, InstallSpec, get_installed, install_locked

PRESET_FILE = "preset.json"
PRESET_FORMAT = "sovcli-preset/1"
MAX_SPEC_BYTES = 256 * 1024  # a spec is a few lines; a chat template a few kilobytes
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MIN_CTX = 64  # = sovcli.engine.types.MIN_CTX (the store may not import the engine)
MAX_CTX = 1 << 20


@dataclass(frozen=True)
class Limit:
    """The range of one setting: `low`/`high` (None: unbounded), `low` excluded if `open_low`."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def describe(self) -> str:
        """The range in words, e.g. '> 0 and <= 1'."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {number_text(self.low)}")
        if self.high is not None:
            parts.append(f"<= {number_text(self.high)}")
        return " and ".join(parts)

    def contains(self, value: float) -> bool:
        """Whether `value` is in the range."""
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


def number_text(value: float) -> str:
    """A number as a user typed it: `5` rather than `5.0`."""
    return str(int(value)) if float(value).is_integer() else str(value)


SAMPLING_LIMITS: dict[str, Limit] = {
    "temperature": Limit(float, 0.0),
    "top_p": Limit(float, 0.0, 1.0, open_low=True),
    "top_k": Limit(int, 0),
    "min_p": Limit(float, 0.0, 1.0),
    "seed": Limit(int, 0),
    "repeat_penalty": Limit(float, 0.0, open_low=True),
    "presence_penalty": Limit(float, -2.0, 2.0),
    "frequency_penalty": Limit(float, -2.0, 2.0),
    "max_tokens": Limit(int, 0),
}
"""What `/set`, the CLI options and `-o` accept: one range per sampling setting."""

PARAMETER_LIMITS: dict[str, Limit] = {
    **SAMPLING_LIMITS,
    "seed": Limit(int, 0, 2**32 - 1),
    "max_tokens": Limit(int, 0, 1 << 31),
    "ctx": Limit(int, MIN_CTX, MAX_CTX),
}
"""What a spec's [parameters] table accepts (seed and max_tokens bounded: they are stored)."""

SPEC_KEYS = ("system", "template", "stop", "description", "parameters")


@dataclass(frozen=True)
class Preset:
    """What a created model adds to its base: used by run/chat (flags override it) and as
    defaults by serve and batch."""

    system: str | None = None
    template: str | None = None
    stop: tuple[str, ...] = ()
    parameters: dict[str, int | float] = field(default_factory=dict)
    description: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # base model and spec provenance

    def sampling_defaults(self) -> dict[str, int | float]:
        """The preset's sampling settings (no `max_tokens`, no `ctx`)."""
        return {
            k: v for k, v in self.parameters.items() if k in SAMPLING_LIMITS and k != "max_tokens"
        }

    def openai_defaults(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` (an OpenAI chat or text completion request) with the preset's values where
        the request sets none: sampling keys, `max_tokens`, `stop`, and for a chat without a
        system message, the system prompt first."""
        out = dict(body)
        for key, value in self.parameters.items():
            if key != "ctx" and out.get(key) is None:
                out[key] = value
        if self.stop and out.get("stop") is None:
            out["stop"] = list(self.stop)
        messages = out.get("messages")
        if self.system and isinstance(messages, list):
            roles = {m.get("role") for m in messages if isinstance(m, dict)}
            if not roles & {"system", "developer"}:
                out["messages"] = [{"role": "system", "content": self.system}, *messages]
        return out


# ----------------------------------------------------------------------------- the spec


def spec_problem(where: str, key: str, problem: str) -> UsageError:
    """The one-line error for a bad key of a spec."""
    return UsageError(
        f"{where}: {key} {problem}",
        hint="A spec holds system, template, stop, description and a [parameters] table "
        "(see docs/models-and-store.md#sovcli-create).",
    )


def _unknown(where: str, key: str, known: list[str] | tuple[str, ...]) -> UsageError:
    close = difflib.get_close_matches(key, list(known), n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return spec_problem(where, repr(key), f"is not a known key{guess}")


def _text(where: str, key: str, value: Any, limit: int = MAX_SPEC_BYTES) -> str:
    if not isinstance(value, str):
        raise spec_problem(where, key, f"must be a string, not {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise spec_problem(where, key, "is not valid text (a lone surrogate)") from None
    if "\x00" in value:
        raise spec_problem(where, key, "holds a NUL character")
    if len(value) > limit:
        raise spec_problem(where, key, f"is longer than {limit} characters")
    return value


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def check_parameter(where: str, key: str, value: Any) -> int | float:
    """`value` for parameter `key` of a spec, checked for type and range (UsageError)."""
    limit = PARAMETER_LIMITS.get(key)
    if limit is None:
        raise _unknown(where, f"parameters.{key}", [f"parameters.{k}" for k in PARAMETER_LIMITS])
    name = f"parameters.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        wanted = "a whole number" if limit.kind is int else "a number"
        raise spec_problem(where, name, f"must be {wanted}, not {_kind(value)}")
    if limit.kind is int and not isinstance(value, int):
        raise spec_problem(where, name, f"must be a whole number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise spec_problem(where, name, f"must be a finite number, not {value!r}")
    if not limit.contains(value):
        raise spec_problem(where, name, f"must be {limit.describe()}, not {number_text(value)}")
    return limit.kind(value)


def check_spec(doc: Any, where: str) -> Preset:
    """The Preset a spec (a parsed TOML/JSON table) describes; UsageError naming a bad key."""
    if not isinstance(doc, dict):
        raise spec_problem(where, "the spec", "must be a table")
    for key in doc:
        if key not in SPEC_KEYS:
            raise _unknown(where, key, SPEC_KEYS)
    system = _text(where, "system", doc["system"]) if doc.get("system") is not None else None
    template = doc.get("template")
    if template is not None:
        template = _text(where, "template", template)
    description = doc.get("description")
    if description is not None:
        description = _text(where, "description", description, 1000)
    stop = doc.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        raise spec_problem(
            where, "stop", f"must be a string or a list of strings, not {_kind(stop)}"
        )
    if len(stop) > MAX_STOP_STRINGS:
        raise spec_problem(where, "stop", f"holds more than {MAX_STOP_STRINGS} strings")
    stops = tuple(_text(where, f"stop[{i}]", s, MAX_STOP_CHARS) for i, s in enumerate(stop))
    if any(not s for s in stops):
        raise spec_problem(where, "stop", "holds an empty string")
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise spec_problem(where, "parameters", f"must be a table, not {_kind(params)}")
    checked = {k: check_parameter(where, str(k), v) for k, v in params.items()}
    return Preset(system or None, template or None, stops, checked, description)


def read_spec(path: Path) -> tuple[Preset, bytes]:
    """The Preset in the TOML spec file `path` and the file's bytes (UsageError if bad)."""
    where = str(path)
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise UsageError(f"{where} is larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is small")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where} is not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{where} is not valid TOML: {exc}",
            hint='e.g. system = "You answer briefly."  and  [parameters] temperature = 0.2',
        ) from None
    return check_spec(doc, where), data


def merged(base: Preset | None, new: Preset) -> Preset:
    """`new` on top of a base model's own preset (creating from a created model)."""
    if base is None:
        return new
    return Preset(
        system=new.system or base.system,
        template=new.template or base.template,
        stop=new.stop or base.stop,
        parameters={**base.parameters, **new.parameters},
        description=new.description or base.description,
    )


# ----------------------------------------------------------------------------- stored presets


def preset_of(model: InstalledModel) -> Preset | None:
    """The preset of a created model (None for any other), checked against the manifest's
    sha256 and re-validated: a preset from a bundle is input like any other."""
    records = [r for r in model.manifest.get("files") or [] if r.get("path") == PRESET_FILE]
    if not records:
        return None
    path = file_in(model.directory, PRESET_FILE)
    hint = f"Run `sovcli verify {model.ref}`; create the model again."
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(
            f"{model.ref}: cannot read {PRESET_FILE}: {exc.strerror}", hint=hint
        ) from None
    if hashlib.sha256(data).hexdigest() != records[0].get("sha256"):
        raise IntegrityError(f"{model.ref}: {PRESET_FILE} does not match its manifest", hint=hint)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{model.ref}: {PRESET_FILE} is not JSON: {exc}", hint=hint) from None
    if not isinstance(doc, dict) or doc.get("format") != PRESET_FORMAT:
        raise StoreError(f"{model.ref}: {PRESET_FILE} is not a {PRESET_FORMAT} preset", hint=hint)
    origin = {k: doc.get(k) for k in ("from", "spec", "created_at")}
    body = {k: doc[k] for k in SPEC_KEYS if doc.get(k) is not None}
    preset = check_spec(body, f"{model.ref} {PRESET_FILE}")
    return Preset(
        preset.system, preset.template, preset.stop, preset.parameters, preset.description, origin
    )


def _preset_document(preset: Preset, base: InstalledModel, spec: bytes, spec_name: str) -> bytes:
    gguf_sha = next(
        (
            r.get("sha256")
            for r in base.manifest.get("files") or []
            if r.get("path") == base.manifest.get("gguf")
        ),
        None,
    ) or sha256_file(base.gguf_path)
    doc = {
        "format": PRESET_FORMAT,
        "from": {
            "model": base.ref,
            "gguf": base.gguf_path.name,
            "gguf_sha256": gguf_sha,
            "manifest_sha256": base.manifest_sha256,
        },
        "spec": {
            "file": spec_name,
            "sha256": hashlib.sha256(spec).hexdigest(),
            "text": spec.decode("utf-8"),
        },
        "created_at": utc_now(),
        "system": preset.system,
        "template": preset.template,
        "stop": list(preset.stop),
        "parameters": preset.parameters,
        "description": preset.description,
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _linked(model: InstalledModel, relpaths: list[str]) -> list[FileToInstall]:
    """Files of `model` to hard-link (copy when impossible) into a new model, with the
    hashes of its manifest (`sovcli verify NEW` re-hashes them)."""
    records = {r["path"]: r for r in model.manifest.get("files") or []}
    return [
        FileToInstall(
            src=file_in(model.directory, rel),
            relpath=rel,
            sha256=records[rel]["sha256"],
            trusted=True,
            mode="link",
        )
        for rel in relpaths
    ]


def _base_files(base: InstalledModel) -> list[FileToInstall]:
    """The GGUF file(s) llama.cpp loads for `base`, linked (copied when impossible)."""
    records = [r["path"] for r in base.manifest.get("files") or []]
    if not records:  # a .gguf used in place: hashed as it is linked
        return [FileToInstall(src=base.gguf_path, relpath=base.gguf_path.name, mode="link")]
    return _linked(base, shard_group(base.manifest["gguf"], set(records)))


def _register(
    name: str,
    tag: str,
    files: list[FileToInstall],
    source: dict[str, Any],
    like: InstalledModel,
    description: str | None,
    progress: Progress | None,
) -> InstalledModel:
    """Install `files` as `name:tag`, with `like`'s licence, gating and conversion record."""
    gguf = like.manifest.get("gguf")
    return install_locked(
        InstallSpec(
            name=name,
            tag=tag,
            files=files,
            source=source,
            gguf_file=gguf if gguf in {f.relpath for f in files} else files[0].relpath,
            license=like.manifest.get("license"),
            gated=like.manifest.get("gated"),
            description=description,
            conversion=like.manifest.get("conversion"),
        ),
        progress,
    )


def _check_target(name: str, tag: str, replace_kinds: tuple[str, ...]) -> None:
    existing = get_installed(name, tag)
    if existing is None:
        return
    kind = (existing.manifest.get("source") or {}).get("kind")
    if kind not in replace_kinds:
        raise UsageError(
            f"{name}:{tag} is already installed",
            hint=f"Choose another name, or remove it first: `sovcli rm {name}:{tag}`.",
        )


def create_model(
    name: str,
    tag: str,
    base: InstalledModel,
    preset: Preset,
    spec: bytes,
    spec_name: str,
    progress: Progress | None = None,
) -> InstalledModel:
    """Register `name:tag`: `base`'s GGUF and `preset` (replaces an earlier created model of
    that name, never another kind of model)."""
    _check_target(name, tag, ("created",))
    document = _preset_document(preset, base, spec, spec_name)
    paths.partial_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.partial_dir(), prefix=".preset-") as tmp:
        preset_path = Path(tmp) / PRESET_FILE
        atomic_write_bytes(preset_path, document)
        files = [*_base_files(base), FileToInstall(preset_path, PRESET_FILE, mode="copy")]
        spec_sha = hashlib.sha256(spec).hexdigest()
        source = {"kind": "created", "from": base.ref, "spec_sha256": spec_sha}
        source["gguf_sha256"] = json.loads(document)["from"]["gguf_sha256"]
        description = preset.description or f"{base.ref} with a preset"
        return _register(name, tag, files, source, base, description, progress)


def copy_model(
    src: InstalledModel, name: str, tag: str, progress: Progress | None = None
) -> InstalledModel:
    """Register `name:tag` as a copy of `src` (files hard-linked when possible, the same
    hashes, a `copy` provenance naming `src`)."""
    _check_target(name, tag, ())
    if (src.name, src.tag) == (name, tag):
        raise UsageError(f"{src.ref} is already called {name}:{tag}")
    records = [r["path"] for r in src.manifest.get("files") or []]
    files = _linked(src, records) if records else _base_files(src)
    source = {
        "kind": "copy",
        "from": src.ref,
        "manifest_sha256": src.manifest_sha256,
        "original_source": src.manifest.get("source"),
    }
    return _register(name, tag, files, source, src, src.manifest.get("description"), progress)
