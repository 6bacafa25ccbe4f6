"""CLI: `sovcli pull` - fetch, verify and register a model from any source."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption, QuietOption

RefArgument = Annotated[
    str,
    typer.Argument(
        help="alias[:QUANT], hf:org/repo[:QUANT], hf:org/repo/file.gguf, ./x.gguf or x.tar",
        show_default=False,
    ),
]
RevisionOption = Annotated[
    str | None, typer.Option("--revision", help="Hub branch, tag or commit.")
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint", help="Hub URL (a site mirror); default $HF_ENDPOINT or huggingface.co."
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Download again even if installed.")]
KeepSourceOption = Annotated[
    bool,
    typer.Option("--keep-source", help="Keep the safetensors checkpoint after converting it."),
]


def pull_command(
    model: RefArgument,
    revision: RevisionOption = None,
    endpoint: EndpointOption = None,
    quiet: QuietOption = False,
    force: ForceOption = False,
    keep_source: KeepSourceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Fetch a model, verify every byte and register it in the store.

    \b
    Examples:
      sovcli pull smollm2-135m
      sovcli pull qwen2.5-0.5b:Q8_0
      sovcli pull hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M --revision main
      HF_ENDPOINT=https://hub.example.internal sovcli pull mistral-7b-instruct
      sovcli pull ./SmolLM2-135M-Instruct.Q4_1.gguf
      sovcli pull ./smollm2-135m-Q4_1.tar
    """
    from sovcli.cli.models import sweep_store
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.resolve import FetchOptions, pull

    sweep_store()
    with make_progress(quiet) as progress:
        options = FetchOptions(
            revision=revision,
            endpoint=endpoint,
            keep_source=keep_source,
            force=force,
            progress=progress,
        )
        result = pull(model, options)
    found = result.model
    if not quiet and result.already_installed:
        log(f"{found.ref} is already installed ({found.directory})")
    elif not quiet:
        log(f"pulled {found.ref}: {_size(found) / 1e6:.1f} MB, sha256 verified")
        log(f"manifest {found.directory / 'manifest.json'}")
    if json_output:
        print_json(_summary(found))


def _size(model: Any) -> int:
    return sum(int(f.get("size", 0)) for f in model.manifest.get("files", []))


def _summary(model: Any) -> dict[str, Any]:
    return {
        "model": model.ref,
        "path": str(model.gguf_path),
        "size": _size(model),
        "files": model.manifest.get("files", []),
        "source": model.manifest.get("source"),
        "manifest_sha256": model.manifest_sha256,
    }


COMMANDS = {"pull": pull_command}
