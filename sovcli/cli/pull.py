"""CLI: `sovcli pull` - fetch, verify and register a model from any source."""

from __future__ import annotations

import typer


def _summary(model) -> dict:  # type: ignore[no-untyped-def]
    files = model.manifest.get("files", [])
    return {
        "model": model.ref,
        "path": str(model.gguf_path),
        "size": sum(int(f.get("size", 0)) for f in files),
        "files": files,
        "source": model.manifest.get("source"),
        "manifest_sha256": model.manifest_sha256,
    }


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("pull")
    def pull(
        model: str = typer.Argument(
            ...,
            help="alias[:QUANT], hf:org/repo[:QUANT], hf:org/repo/file.gguf, ./x.gguf or x.tar",
        ),
        revision: str = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
        endpoint: str = typer.Option(
            None,
            "--endpoint",
            help="Hub URL (a site mirror); default $HF_ENDPOINT or huggingface.co.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        force: bool = typer.Option(False, "--force", help="Download again even if installed."),
        keep_source: bool = typer.Option(
            False, "--keep-source", help="Keep the safetensors checkpoint after converting it."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
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
        from sovcli.console import err_console, print_json
        from sovcli.sources import pull_model
        from sovcli.store import find_installed
        from sovcli.store.names import parse_ref

        parsed = parse_ref(model)
        found = None
        if not force and parsed.kind in ("alias", "hf", "name"):
            found = find_installed(model)
            src = (found.manifest.get("source") or {}) if found else {}
            if found and revision and revision not in (src.get("revision"), src.get("commit")):
                found, force = None, True  # installed from another revision: replace it
        if found is not None:
            if not quiet:
                err_console().print(
                    f"{found.ref} is already installed ({found.directory})",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
        else:
            found = pull_model(
                model,
                revision=revision,
                endpoint=endpoint,
                quiet=quiet,
                keep_source=keep_source,
                force=force,
            )
            if not quiet:
                size = sum(int(f.get("size", 0)) for f in found.manifest.get("files", []))
                err_console().print(
                    f"pulled {found.ref}: {size / 1e6:.1f} MB, sha256 verified, "
                    f"manifest {found.directory / 'manifest.json'}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
        if json_out:
            print_json(_summary(found))
