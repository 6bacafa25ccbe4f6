"""CLI: list, show, rm, import, verify, export - managing the models in the store."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption, ModelArgument, QuietOption, YesOption
from sovcli.cli.sign import TrustCaOption, TrustKeyOption, signature_line

# --------------------------------------------------------------------------- formatting


def _human(n: float | None) -> str:
    if not n:
        return "-"
    from sovcli.cli.progress import human_bytes

    return human_bytes(n)


def _params(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _source_text(source: dict[str, Any]) -> str:
    kind = source.get("kind", "?")
    if kind == "hf":
        return f"hf:{source.get('repo')}@{str(source.get('commit') or source.get('revision'))[:12]}"
    if kind == "pypi":
        text = f"pypi:{source.get('package')}=={source.get('version')}"
        n = len(source.get("parts") or [])
        return text + (f" (+{n - 1} parts)" if n > 1 else "")
    if kind == "local":
        return f"local:{Path(str(source.get('path'))).name}"
    if kind == "bundle":
        return f"bundle:{Path(str(source.get('bundle'))).name}"
    return kind


def _say(text: str) -> None:
    """One line of data on stdout, never re-wrapped."""
    from sovcli.cli.output import out_console

    out_console().print(text, markup=False, highlight=False, soft_wrap=True)


def sweep_store() -> None:
    """Clear what interrupted sovcli processes left in the store; every store command starts
    with it (`sovcli.store.sweep`: only what no live process holds is removed)."""
    from sovcli.cli.output import log
    from sovcli.cli.progress import human_bytes
    from sovcli.store.sweep import sweep_leftovers

    swept = sweep_leftovers()
    if swept.paths:
        log(
            f"removed {len(swept.paths)} leftover(s) of interrupted sovcli runs "
            f"({human_bytes(swept.bytes)})"
        )


def _installed_or_broken(ref: str) -> Any:
    """The installed model `ref` names, or the BrokenModel when its manifest is missing or
    unreadable (so that `verify` reports it and `rm` removes it); else as `require_installed`."""
    from sovcli.errors import ModelNotFoundError, StoreError
    from sovcli.resolve import require_installed
    from sovcli.store.names import parse_ref
    from sovcli.store.registry import find_broken

    try:
        return require_installed(ref)
    except (StoreError, ModelNotFoundError):
        parsed = parse_ref(ref)
        broken = find_broken(parsed.name, parsed.tag) if parsed.tag else None
        if broken is None:
            raise
        return broken


def _print_table(
    headers: list[str], rows: list[list[str]], steps: tuple[tuple[str, str], ...] = ()
) -> None:
    """Aligned columns that fit the terminal (80 columns in a pipe, or $COLUMNS).

    While the table is too wide, `steps` apply in order: ("drop", COLUMN) leaves a column
    out, ("cut", COLUMN) shortens its cells with "…", ("below", COLUMN) prints its cells on
    their own indented lines under each row. `--json` is the complete form for scripts.
    """
    from sovcli.cli.output import out_console

    width = out_console().width
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    shown = list(range(len(headers)))
    modes: dict[int, str] = {}
    below: list[int] = []

    def excess() -> int:
        return sum(widths[c] for c in shown) + 2 * (len(shown) - 1) - width

    for action, name in steps:
        column = headers.index(name)
        if excess() <= 0 or column not in shown:
            continue
        if action in ("drop", "below"):
            shown.remove(column)
            below += [column] if action == "below" else []
        else:
            widths[column] = max(MIN_CELL, widths[column] - excess())
            modes[column] = action
    for n, row in enumerate([headers, *rows]):
        cells = [_cell(row[c], widths[c], modes.get(c, "")) for c in shown]
        for i in range(max(len(cell) for cell in cells)):
            parts = [
                (cell[i] if i < len(cell) else "").ljust(widths[c])
                for c, cell in zip(shown, cells, strict=True)
            ]
            _say("  ".join(parts).rstrip())
        for line in [] if n == 0 else [ln for c in below for ln in _cell(row[c], width - 4)]:
            _say(f"    {line}")


MIN_CELL = 16


def _cell(text: str, width: int, mode: str = "wrap") -> list[str]:
    """The lines of one cell: wrapped to `width`, cut with "…", or (None) as is."""
    if mode == "wrap":  # a no-break space (\u00a0) keeps two words on one line
        return [line.replace("\u00a0", " ") for line in textwrap.wrap(text, width)] or [""]
    if mode == "cut" and len(text) > width:
        return [text[: width - 1] + "…"]
    return [text]


def _model_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [r["model"], "BROKEN", "-", "-", "-", "-", "-"]
        if r["status"] == "broken"
        else [
            r["model"],
            _human(r["size"]),
            str(r["quantization"] or "-"),
            str(r["architecture"] or "-"),
            _params(r["parameter_count"]),
            _source_text(r["source"] or {}),
            str(r["created_at"] or "-")[:10],
        ]
        for r in rows
    ]


def _catalog_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            r["alias"],
            r["default_quant"],
            str(r["license"] or "-") + (" (gated)" if r["gated"] else ""),
            "yes" if r["installed"] else "",
            r["description"] + ("" if r["verified"] else " [unverified\u00a0repo]"),
        ]
        for r in rows
    ]


def _show_lines(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """`sovcli show` as (key, value) lines, from `store.report.show_report`."""
    meta, m = report["gguf"], report["manifest"]
    src = m.get("source") or {}
    count = meta.get("parameter_count")
    lines: list[tuple[str, Any]] = [
        ("model", report["model"]),
        ("path", report["path"]),
        ("architecture", meta.get("architecture")),
        ("parameters", f"{_params(count)} ({count:,})" if count else "-"),
        ("context length", meta.get("context_length")),
        ("quantization", meta.get("quantization")),
        ("tensors", meta.get("tensor_count")),
        ("chat template", "yes" if meta.get("chat_template") else "no"),
        ("license", m.get("license") or report["metadata"].get("general.license")),
        ("source", _source_text(src)),
    ]
    keys = ("repo", "revision", "commit", "endpoint", "package", "version", "member", "path")
    lines += [(f"  {key}", src[key]) for key in keys if src.get(key)]
    for f in m.get("files", []):
        lines.append(("file", f"{f['path']}  {_human(f['size'])}"))
        lines.append(("  sha256", f["sha256"]))
    lines += [
        ("installed", m.get("created_at")),
        ("sovcli", m.get("sovcli_version")),
        ("llama.cpp", m.get("llama_cpp_version")),
    ]
    if m.get("conversion"):
        lines.append(("conversion", "yes (see --json)"))
    return lines


def _print_metadata(keys: dict[str, Any]) -> None:
    _say("")
    for key in sorted(keys):
        value = keys[key]
        text = value if isinstance(value, str) else repr(value)
        _say(f"{key} = {text[:200] + '...' if len(text) > 200 else text}")


def _print_verify(reports: list[dict[str, Any]]) -> None:
    if not reports:
        _say("no models installed")
    for report in reports:
        if report.get("manifest") is False:
            _say(
                f"{report['model']}  GGUF structure ok (not in the store: no manifest "
                "hashes to compare with)"
            )
            continue
        for f in report["files"]:
            status = "ok" if f["status"] == "ok" else f"FAILED ({f['status']})"
            _say(f"{report['model']}  {f['path']}  {status}")
        line = signature_line(report)
        if line:
            _say(line)


# --------------------------------------------------------------------------- commands

AvailableOption = Annotated[
    bool, typer.Option("--available", help="List the catalog's aliases instead.")
]
MetadataOption = Annotated[bool, typer.Option("--metadata", help="Also print every GGUF key.")]
OptionalModelArgument = Annotated[
    str | None,
    typer.Argument(help="An installed model or a .gguf path; all models when omitted."),
]


def list_command(json_output: JsonOption = False, available: AvailableOption = False) -> None:
    """List installed models (or the catalog with --available).

    Columns that do not fit the terminal are left out; --json has them all.

    \b
    Examples:
      sovcli list
      sovcli list --json
      sovcli list --available
    """
    from sovcli.cli.output import log, print_json
    from sovcli.store.registry import scan_store
    from sovcli.store.report import broken_row, model_row

    sweep_store()
    installed, broken = scan_store()
    if available:
        from sovcli.sources.catalog import load_catalog

        rows = load_catalog().describe({m.name for m in installed})
        if json_output:
            print_json(rows)
        else:
            headers = ["ALIAS", "QUANT", "LICENSE", "INSTALLED", "DESCRIPTION"]
            _print_table(headers, _catalog_rows(rows), (("below", "DESCRIPTION"),))
        return
    rows = [model_row(m) for m in installed] + [broken_row(b) for b in broken]
    if json_output:
        print_json(rows)
    elif not rows:
        log("no models installed; try `sovcli pull smollm2-135m`")
    else:
        headers = ["MODEL", "SIZE", "QUANT", "ARCH", "PARAMS", "SOURCE", "INSTALLED"]
        steps = (
            ("drop", "INSTALLED"),
            ("cut", "SOURCE"),
            ("drop", "SOURCE"),
            ("drop", "PARAMS"),
            ("drop", "ARCH"),
        )
        _print_table(headers, _model_rows(rows), steps)
    for b in broken:
        log(f"{b.ref} is broken ({b.reason}); remove it: `sovcli rm {b.ref}`")


def show_command(
    model: ModelArgument, json_output: JsonOption = False, metadata: MetadataOption = False
) -> None:
    """Show a model's GGUF metadata and provenance.

    \b
    Examples:
      sovcli show smollm2-135m
      sovcli show smollm2-135m:Q4_1 --json
      sovcli show ./model.gguf --metadata
    """
    from sovcli.cli.output import print_json
    from sovcli.resolve import require_installed
    from sovcli.store.report import show_report

    sweep_store()
    report = show_report(require_installed(model))
    if json_output:
        print_json(report)
        return
    lines = _show_lines(report)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _say(f"{key.ljust(width)}  {value if value is not None else '-'}")
    if metadata:
        _print_metadata(report["metadata"])


def rm_command(model: ModelArgument, yes: YesOption = False) -> None:
    """Remove an installed model from the store.

    Asks first unless --yes; answering no removes nothing and exits 1.

    \b
    Examples:
      sovcli rm smollm2-135m:Q4_1
      sovcli rm qwen2.5-0.5b --yes
    """
    from sovcli.cli.output import log
    from sovcli.errors import UsageError
    from sovcli.governance.audit import audit_store_change, require_trail
    from sovcli.store.registry import remove

    sweep_store()
    found = _installed_or_broken(model)
    manifest = getattr(found, "manifest", {})
    if getattr(found, "tag", None) == "local" and not manifest.get("files"):
        raise UsageError(f"{model} is a file outside the store; sovcli does not delete it")
    what = f"({_human(manifest.get('total_size'))})" if manifest else "(broken)"
    if not yes and not _confirm(f"Remove {found.ref} {what}?"):
        log(f"nothing removed; {found.ref} is still installed")
        raise typer.Exit(1)
    require_trail()  # fail closed: nothing changes in the store unrecorded
    remove(found.name, found.tag)
    audit_store_change("rm", found)
    log(f"removed {found.ref}")


def _confirm(question: str) -> bool:
    """Ask on stderr; no answer (end of input, Ctrl-C at the prompt) counts as no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:
        return False


def import_command(
    path: Annotated[Path, typer.Argument(help="A .gguf file (first shard for split models).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Store name (default: from the file name).")
    ] = None,
    tag: Annotated[
        str | None, typer.Option("--tag", help="Tag (default: the GGUF's quantization).")
    ] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Register a local GGUF file in the store (copied, with a `local` provenance).

    \b
    Examples:
      sovcli import ./SmolLM2-135M-Instruct.Q4_1.gguf
      sovcli import ./my-model-00001-of-00003.gguf --name my-model --tag Q8_0
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.governance.audit import audit_store_change, require_trail
    from sovcli.sources.local import import_gguf
    from sovcli.store.report import model_row

    sweep_store()
    require_trail()
    with make_progress(quiet) as progress:
        model = import_gguf(path, name=name, tag=tag, progress=progress)
    audit_store_change("import", model, path=str(path))
    if json_output:
        print_json(model_row(model) | {"files": model.manifest.get("files")})
        return
    log(f"imported {model.ref} ({_human(model.manifest.get('total_size'))})")
    log(f"into {model.directory}")


def verify_command(
    model: OptionalModelArgument = None,
    key: TrustKeyOption = None,
    ca: TrustCaOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Re-hash installed models against their manifests and check their signatures;
    exit non-zero on any problem.

    A model whose manifest is missing or unreadable fails. A .gguf outside the store has
    no manifest: only its GGUF structure is checked. Signatures (model.sig) are reported ok,
    absent, invalid or untrusted with their signer: checked against --key/--ca and the site
    policy's trust anchors. An invalid one fails; with --key/--ca, so do absent or untrusted.

    \b
    Examples:
      sovcli verify
      sovcli verify smollm2-135m --json
      sovcli verify smollm2-135m --key site-key.pub
      sovcli verify --ca site-root-ca.crt
    """
    from sovcli.cli.output import print_json
    from sovcli.cli.progress import make_progress
    from sovcli.cli.sign import add_signatures, raise_on_signatures, trust_anchors
    from sovcli.store.registry import BrokenModel, scan_store
    from sovcli.store.verify import broken_report, raise_on_failures, verify_models

    sweep_store()
    anchors = trust_anchors(key, ca)
    installed, broken = scan_store() if model is None else ([_installed_or_broken(model)], [])
    broken += [m for m in installed if isinstance(m, BrokenModel)]
    models = [m for m in installed if not isinstance(m, BrokenModel)]
    with make_progress(quiet) as progress:
        reports = verify_models(models, progress) + [broken_report(b) for b in broken]
        add_signatures(reports, models, anchors)
    if json_output:
        print_json(reports)
    else:
        _print_verify(reports)
    raise_on_failures(reports)
    raise_on_signatures(reports, strict=bool(key or ca))


def export_command(
    model: ModelArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The bundle to write (.tar).", show_default=False)
    ],
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write an installed model and its manifest to an air-gap bundle (a .tar).

    The model is verified first; the bundle is written atomically.

    \b
    Examples:
      sovcli export smollm2-135m -o smollm2-135m.tar
      # on the air-gapped machine:
      sovcli pull ./smollm2-135m.tar
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.resolve import require_installed
    from sovcli.sources.bundle import export_bundle

    sweep_store()
    found = require_installed(model, action="export")
    with make_progress(quiet) as progress:
        summary = export_bundle(found, output, progress=progress)
    if json_output:
        print_json(summary)
        return
    log(f"wrote {summary['bundle']} ({_human(summary['size'])}) with {found.ref}")


COMMANDS = {
    "list": list_command,
    "show": show_command,
    "rm": rm_command,
    "import": import_command,
    "verify": verify_command,
    "export": export_command,
}
