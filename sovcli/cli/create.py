"""CLI: `sovcli create NAME --from MODEL -f SPEC.toml` and `sovcli cp SRC DST`.

A created model is a base model's GGUF with a preset (system prompt, parameters, chat
template, stop strings) registered under its own name, with its provenance; see
`sovcli.store.preset`. `cp` registers a model again under another name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sovcli.cli.options import JsonOption, QuietOption
from sovcli.errors import UsageError

if TYPE_CHECKING:
    from sovcli.store.preset import Preset

DEFAULT_TAG = "latest"

NewNameArgument = Annotated[
    str,
    typer.Argument(
        help="The new model: NAME or NAME:TAG (tag default: latest).", show_default=False
    ),
]
FromOption = Annotated[
    str,
    typer.Option(
        "--from", help="The base model: alias, name:tag or .gguf path.", show_default=False
    ),
]
SpecOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="The spec (TOML): system, template, stop, [parameters]."),
]


def new_name(ref: str) -> tuple[str, str]:
    """`(name, tag)` for a model to register: a store name, not a path, a hub reference or a
    catalog alias (those name models sovcli pulls)."""
    from sovcli.sources.catalog import load_catalog
    from sovcli.store.names import parse_ref

    parsed = parse_ref(ref)
    if parsed.kind not in ("alias", "name"):
        raise UsageError(
            f"{ref!r} is not a name for a new model", hint="Use NAME or NAME:TAG, e.g. claims-bot"
        )
    if load_catalog().get(parsed.name) is not None:
        raise UsageError(
            f"{parsed.name} is a catalog alias; a new model needs a name of its own",
            hint=f"e.g. {parsed.name}-assistant",
        )
    return parsed.name, parsed.tag or DEFAULT_TAG


def _summary(preset: Preset) -> str:
    """What a preset sets, in a few words."""
    parts = ["system prompt"] if preset.system else []
    if preset.parameters:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(preset.parameters.items())))
    if preset.template:
        parts.append("chat template")
    if preset.stop:
        parts.append(f"{len(preset.stop)} stop string(s)")
    return "; ".join(parts) or "no settings"


def create_command(
    name: NewNameArgument,
    base: FromOption,
    spec: SpecOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Create a model from another one with a preset: system prompt, parameters, template.

    The new model holds a hard link of the base's GGUF and the preset, with its provenance
    (base model and digest, the spec's sha256); `run`, `chat`, `serve` and `batch` apply
    the preset (flags and request values override it). Creating NAME again replaces it.

    \b
    Example spec (claims.toml):
      system = "You answer claims questions in two sentences."
      stop = ["</answer>"]
      [parameters]
      temperature = 0.2
      max_tokens = 200

    \b
    Examples:
      sovcli create claims-bot --from smollm2-135m -f claims.toml
      sovcli run claims-bot "Is water damage covered?"
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import ensure_model, make_progress
    from sovcli.engine.conversation import check_template
    from sovcli.store.preset import Preset, create_model, merged, preset_of, read_spec
    from sovcli.store.report import model_row

    target, tag = new_name(name)
    preset, data = read_spec(spec) if spec is not None else (Preset(), b"")
    if preset.template:
        check_template(preset.template, f"{spec}: template")
    installed = ensure_model(base, quiet=quiet, action="import")
    combined = merged(preset_of(installed), preset)
    with make_progress(quiet) as progress:
        model = create_model(
            target, tag, installed, combined, data, spec.name if spec else "", progress
        )
    if json_output:
        print_json(model_row(model) | {"preset": model.manifest["source"]})
        return
    log(f"created {model.ref} from {installed.ref} ({_summary(combined)})")


def cp_command(
    source: Annotated[str, typer.Argument(help="An installed model.", show_default=False)],
    target: NewNameArgument,
    json_output: JsonOption = False,
) -> None:
    """Copy an installed model to a new name (files hard-linked, same hashes).

    The copy's provenance names the original; a created model's preset comes along.

    \b
    Examples:
      sovcli cp smollm2-135m:Q4_1 team/smollm2:stable
      sovcli cp claims-bot claims-bot:v1
    """
    from sovcli.cli.output import log, print_json
    from sovcli.resolve import require_installed
    from sovcli.store.preset import copy_model
    from sovcli.store.report import model_row

    name, tag = new_name(target)
    src = require_installed(source, action="import")
    model = copy_model(src, name, tag)
    if json_output:
        print_json(model_row(model))
        return
    log(f"copied {src.ref} to {model.ref}")


COMMANDS = {"create": create_command, "cp": cp_command}
