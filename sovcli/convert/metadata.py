"""General GGUF metadata (name, licence, source, base model) from config.json and the model card."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelCard:
    """The few model-card fields that go into `general.*`."""

    name: str | None = None
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    base_models: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_front_matter(readme: str) -> dict[str, Any]:
    """Parse the top-level `key: value` and `key:` + `- item` lists of a README's YAML header.

    Only the simple shapes model cards use for these fields are read; nested mappings are
    skipped. No YAML library is needed.
    """
    lines = readme.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    result: dict[str, Any] = {}
    current: str | None = None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith((" ", "-", "\t")):
            item = line.strip()
            if (
                current is not None
                and item.startswith("- ")
                and isinstance(result.get(current), list)
            ):
                result[current].append(_scalar(item[2:]))
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        current = key.strip()
        value = value.strip()
        if not value:
            result[current] = []
        elif value.startswith("[") and value.endswith("]"):
            result[current] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
        else:
            result[current] = _scalar(value)
    return result


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if str(v)]
    if isinstance(value, str) and value:
        return [value]
    return []


def read_model_card(folder: Path) -> ModelCard:
    """Read README.md's front matter, if any."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return ModelCard()
    try:
        meta = parse_front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ModelCard()
    license_value = meta.get("license")
    return ModelCard(
        name=meta.get("model_name") if isinstance(meta.get("model_name"), str) else None,
        license=license_value if isinstance(license_value, str) else None,
        license_name=meta.get("license_name")
        if isinstance(meta.get("license_name"), str)
        else None,
        license_link=meta.get("license_link")
        if isinstance(meta.get("license_link"), str)
        else None,
        base_models=_as_list(meta.get("base_model")),
        tags=_as_list(meta.get("tags")),
        languages=_as_list(meta.get("language")),
    )


def model_name(
    folder: Path, config: dict[str, Any], card: ModelCard, source_repo: str | None
) -> str:
    """A human name: model card, else the source repo, else config's _name_or_path, else folder."""
    if card.name:
        return card.name
    if source_repo:
        return source_repo.split("/")[-1]
    name_or_path = str(config.get("_name_or_path") or "")
    if name_or_path and "/" in name_or_path and not name_or_path.startswith(("/", ".")):
        return name_or_path.split("/")[-1]
    return Path(folder).resolve().name


def write_general(
    writer: Any,
    folder: Path,
    config: dict[str, Any],
    *,
    source_repo: str | None = None,
    hub_url: str = "https://huggingface.co",
) -> dict[str, Any]:
    """Add general.* metadata to a GGUFWriter; return what was written (for the report)."""
    card = read_model_card(folder)
    name = model_name(folder, config, card, source_repo)
    writer.add_type("model")
    writer.add_name(name)
    if card.license:
        writer.add_license(card.license)
    if card.license_name:
        writer.add_license_name(card.license_name)
    if card.license_link:
        writer.add_license_link(card.license_link)
    if source_repo:
        writer.add_source_repo_url(f"{hub_url.rstrip('/')}/{source_repo}")
    if card.base_models:
        writer.add_base_model_count(len(card.base_models))
        for i, base in enumerate(card.base_models):
            writer.add_base_model_name(i, base.split("/")[-1])
            if "/" in base:
                writer.add_base_model_organization(i, base.split("/")[0])
                writer.add_base_model_repo_url(i, f"{hub_url.rstrip('/')}/{base}")
    if card.tags:
        writer.add_tags(card.tags)
    if card.languages:
        writer.add_languages(card.languages)
    return {
        "name": name,
        "license": card.license,
        "source_repo": source_repo,
        "base_models": card.base_models,
    }


def _number(value: Any) -> float | None:
    """A finite int/float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def write_sampling_defaults(
    writer: Any, generation_config: dict[str, Any] | None
) -> dict[str, Any]:
    """Carry generation_config.json's sampling defaults into general.sampling.*.

    `repetition_penalty` (HF's name; `penalty_repeat` is accepted too) becomes
    `general.sampling.penalty_repeat` whatever `do_sample` says: transformers applies it to
    greedy decoding as well. temperature, top_p, top_k and min_p only matter when sampling,
    so they are written only when `do_sample` is not false.
    """
    written: dict[str, Any] = {}
    if not isinstance(generation_config, dict):
        return written
    penalty = _number(
        generation_config.get("repetition_penalty", generation_config.get("penalty_repeat"))
    )
    if penalty is not None and penalty > 0:
        writer.add_sampling_penalty_repeat(penalty)
        written["penalty_repeat"] = penalty
    if not generation_config.get("do_sample", True):
        return written
    temperature = _number(generation_config.get("temperature"))
    if temperature is not None and temperature >= 0:
        writer.add_sampling_temp(temperature)
        written["temperature"] = temperature
    top_p = _number(generation_config.get("top_p"))
    if top_p is not None and 0 < top_p <= 1:
        writer.add_sampling_top_p(top_p)
        written["top_p"] = top_p
    top_k = generation_config.get("top_k")
    if type(top_k) is int and top_k >= 0:
        writer.add_sampling_top_k(top_k)
        written["top_k"] = top_k
    min_p = _number(generation_config.get("min_p"))
    if min_p is not None and 0 <= min_p <= 1:
        writer.add_sampling_min_p(min_p)
        written["min_p"] = min_p
    return written
