"""CLI: `sovcli doctor`, a local report on what this machine offers for inference.

Everything is read locally (/proc, sysctl, llama.cpp's own system info, the store folder);
nothing is sent anywhere and no connection is attempted.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

import typer

DOCTOR_HELP = """Check this machine: CPU features, cores, memory, Metal, llama.cpp, store, offline.

Nothing is sent anywhere: every figure is read locally.

Examples:

  sovcli doctor

  sovcli doctor --json
"""

_X86_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vnni",
    "avx_vnni",
    "amx_tile",
)
_ARM_FLAGS = ("neon", "asimd", "asimddp", "sve", "i8mm", "fphp")


def _cpu_linux() -> dict[str, Any]:
    model = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    wanted = _ARM_FLAGS if platform.machine().lower() in ("aarch64", "arm64") else _X86_FLAGS
    features = [f for f in wanted if f in flags]
    if "asimd" in flags and "neon" not in features:
        features.insert(0, "neon")
    return {"model": model, "features": features}


def _sysctl(key: str) -> str | None:
    try:
        out = subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=True
        ).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_mac() -> dict[str, Any]:
    features = []
    if platform.machine() == "arm64":
        features.append("neon")
        for key, name in (
            ("hw.optional.arm.FEAT_DotProd", "dotprod"),
            ("hw.optional.arm.FEAT_I8MM", "i8mm"),
        ):
            if _sysctl(key) == "1":
                features.append(name)
    else:
        for key, name in (("hw.optional.avx2_0", "avx2"), ("hw.optional.avx512f", "avx512f")):
            if _sysctl(key) == "1":
                features.append(name)
    return {
        "model": _sysctl("machdep.cpu.brand_string") or platform.processor(),
        "features": features,
    }


def _memory() -> dict[str, int | None]:
    total = available = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key == "MemTotal":
                    total = int(value.split()[0]) * 1024
                elif key == "MemAvailable":
                    available = int(value.split()[0]) * 1024
    except OSError:
        mem = _sysctl("hw.memsize")
        total = int(mem) if mem and mem.isdigit() else None
    return {"total_bytes": total, "available_bytes": available}


def _llama_info() -> dict[str, Any]:
    try:
        from sovcli.engine._llama import llama

        ll = llama()
    except Exception as exc:
        return {"available": False, "error": str(exc)}
    import llama_cpp

    info: dict[str, Any] = {"available": True, "llama_cpp_python": llama_cpp.__version__}
    try:
        raw = ll.llama_print_system_info()
        info["system_info"] = raw.decode("utf-8", errors="replace").strip() if raw else ""
    except Exception as exc:  # pragma: no cover - old builds
        info["system_info"] = f"unavailable: {exc}"
    info["gpu_offload"] = bool(ll.llama_supports_gpu_offload())
    info["mmap"] = bool(ll.llama_supports_mmap())
    info["mlock"] = bool(ll.llama_supports_mlock())
    info["metal"] = info["gpu_offload"] and platform.system() == "Darwin"
    return info


def _store() -> dict[str, Any]:
    from sovcli.paths import sovcli_home

    home = sovcli_home()
    probe = home
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return {"home": str(home), "exists": home.exists(), "free_bytes": free}


def _offline() -> dict[str, Any]:
    env = {
        key: os.environ[key]
        for key in ("HF_HUB_OFFLINE", "SOVCLI_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "HTTP_PROXY")
        if os.environ.get(key)
    }
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
    return {
        "offline_mode": offline,
        "environment": env,
        "note": "sovcli sends no telemetry; only pull/update contact a hub, mirror or index.",
    }


def collect() -> dict[str, Any]:
    """The whole report as a dict (what --json prints)."""
    from sovcli import __version__
    from sovcli.engine.defaults import physical_cores, usable_cpus

    system = platform.system()
    cpu = _cpu_mac() if system == "Darwin" else _cpu_linux()
    cpu.update(
        {
            "arch": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "physical_cores": physical_cores(),
        }
    )
    return {
        "sovcli": __version__,
        "python": sys.version.split()[0],
        "os": f"{system} {platform.release()}",
        "cpu": cpu,
        "memory": _memory(),
        "llama_cpp": _llama_info(),
        "store": _store(),
        "network": _offline(),
    }


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value is not None else "unknown"


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from sovcli.console import out_console

    cpu, mem, ll, store, net = (
        report["cpu"],
        report["memory"],
        report["llama_cpp"],
        report["store"],
        report["network"],
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("sovcli", f"{report['sovcli']} (Python {report['python']}, {report['os']})")
    table.add_row("CPU", f"{cpu['model'] or 'unknown'} ({cpu['arch']})")
    table.add_row(
        "cores",
        f"{cpu['physical_cores']} physical, {cpu['logical_cpus']} logical, "
        f"{cpu['usable_cpus']} usable -> default threads {cpu['physical_cores']}",
    )
    table.add_row(
        "CPU features", ", ".join(cpu["features"]) or "none of the SIMD sets llama.cpp uses"
    )
    table.add_row(
        "memory", f"{_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} available"
    )
    if ll.get("available"):
        table.add_row("llama.cpp", f"llama-cpp-python {ll['llama_cpp_python']}")
        table.add_row("system info", ll.get("system_info", ""))
        table.add_row(
            "Metal",
            "yes, layers offload by default"
            if ll["metal"]
            else ("GPU offload available" if ll["gpu_offload"] else "no (CPU only)"),
        )
        table.add_row("mmap / mlock", f"{ll['mmap']} / {ll['mlock']}")
    else:
        table.add_row("llama.cpp", f"NOT AVAILABLE: {ll.get('error')}")
    table.add_row(
        "store",
        f"{store['home']} ({'exists' if store['exists'] else 'not created yet'}), "
        f"{_gib(store['free_bytes'])} free",
    )
    mode = "offline (HF_HUB_OFFLINE)" if net["offline_mode"] else "online commands allowed"
    extra = ", ".join(f"{k}={v}" for k, v in net["environment"].items())
    table.add_row("network", mode + (f"; {extra}" if extra else ""))
    table.add_row("telemetry", "none")
    out_console().print(table)


def register(app: typer.Typer) -> None:
    """Add `doctor` to the app."""

    @app.command("doctor", help=DOCTOR_HELP)
    def doctor_command(
        json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        from sovcli.console import print_json

        report = collect()
        if json_output:
            print_json(report)
        else:
            _print_report(report)
