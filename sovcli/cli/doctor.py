"""CLI: `sovcli doctor`, a local report on what this machine offers for inference.

The report comes from `sovcli.diagnostics.collect()`; this module only renders it, as plain
lines (wrapped to the terminal's width on a terminal, never padded with spaces in a pipe).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Any

from sovcli.cli.options import JsonOption

LABEL_WIDTH = 13
VALUE_WIDTH = 24


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value is not None else "unknown"


def _machine_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    cpu, mem = report["cpu"], report["memory"]
    return [
        ("sovcli", f"{report['sovcli']} (Python {report['python']}, {report['os']})"),
        ("CPU", f"{cpu['model'] or 'unknown'} ({cpu['arch']})"),
        (
            "cores",
            f"{cpu['physical_cores']} physical, {cpu['logical_cpus']} logical, "
            f"{cpu['usable_cpus']} usable -> default threads {cpu['physical_cores']}",
        ),
        ("CPU features", ", ".join(cpu["features"]) or "none of the SIMD sets llama.cpp uses"),
        ("memory", f"{_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} available"),
    ]


def _runtime_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    ll, store, net = report["llama_cpp"], report["store"], report["network"]
    if ll.get("available"):
        if ll["metal"]:
            gpu = "yes, layers offload by default"
        else:
            gpu = "GPU offload available" if ll["gpu_offload"] else "no (CPU only)"
        rows = [
            ("llama.cpp", f"llama-cpp-python {ll['llama_cpp_python']}"),
            ("system info", ll.get("system_info", "")),
            ("Metal", gpu),
            ("mmap / mlock", f"{ll['mmap']} / {ll['mlock']}"),
        ]
    else:
        rows = [("llama.cpp", f"NOT AVAILABLE: {ll.get('error')}")]
    created = "exists" if store["exists"] else "not created yet"
    rows.append(("store", f"{store['home']} ({created}), {_gib(store['free_bytes'])} free"))
    if "error" in net:
        mode = f"unknown: {net['error']}"
    else:
        mode = "offline (HF_HUB_OFFLINE)" if net["offline_mode"] else "online commands allowed"
    rows += [("network", mode), ("telemetry", "none")]
    return rows


def _line(left: str, right: str, indent: int, width: int | None) -> list[str]:
    """`left` padded to `indent`, then `right`; wrapped under itself when `width` is set."""
    text = f"{left:<{indent}}{right}".rstrip() if right else left
    if width is None or len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False) or [
        text
    ]


def _settings_lines(rows: list[dict[str, Any]], width: int | None) -> list[str]:
    values = [row["value"] if row["value"] is not None else "-" for row in rows]
    name_width = max(len(r["name"]) for r in rows) + 2
    value_width = min(max(len(v) for v in values), VALUE_WIDTH) + 2  # a long value overflows
    lines = ["environment variables (name, value or -, meaning):"]
    for row, value in zip(rows, values, strict=True):
        left = f"  {row['name']:<{name_width}}{value}"
        indent = max(len(left) + 2, 2 + name_width + value_width)
        lines += _line(left, row["meaning"], indent, width)
    return lines


def render(report: dict[str, Any], width: int | None = None) -> str:
    """The report as text lines; `width` wraps long values (None: no wrapping, for pipes)."""
    lines: list[str] = []
    for label, value in _machine_rows(report) + _runtime_rows(report):
        lines += _line(label, value, LABEL_WIDTH + 1, width)
    lines.append("")
    lines += _settings_lines(report["settings"], width)
    return "\n".join(lines) + "\n"


def doctor_command(json_output: JsonOption = False) -> None:
    """Check this machine: CPU features, cores, memory, Metal, llama.cpp, store, settings.

    Also lists every environment variable sovcli reads, with its current value (secrets
    only as "(set)"). Nothing is sent anywhere: every figure is read locally.

    Examples:

      sovcli doctor

      sovcli doctor --json
    """
    from sovcli.cli.output import print_json
    from sovcli.diagnostics import collect

    report = collect()
    if json_output:
        print_json(report)
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    sys.stdout.write(render(report, width))
    sys.stdout.flush()


COMMANDS = {"doctor": doctor_command}
