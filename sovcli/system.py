"""What this machine offers: CPU model and SIMD features, cores, memory.

Everything is read locally (/proc, sysctl, the affinity mask); nothing is sent anywhere.
The engine takes its default thread count from `physical_cores()`; `sovcli doctor` shows it all.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from typing import Any

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


def memory() -> dict[str, int | None]:
    """Total and available memory in bytes (None where the OS does not say)."""
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


def _linux_physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            core_id = value.strip()
    return len(cores) or None


def _mac_physical_cores() -> int | None:
    for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
        out = _sysctl(key)
        if out and out.isdigit() and int(out) > 0:
            return int(out)
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores usable by this process (SMT siblings not counted); at least 1."""
    system = platform.system()
    found = None
    if system == "Linux":
        found = _linux_physical_cores()
    elif system == "Darwin":
        found = _mac_physical_cores()
    logical = usable_cpus()
    if found is None:
        total = os.cpu_count() or 1
        # Without topology information assume 2-way SMT on x86 machines with many threads.
        found = total // 2 if total >= 8 and platform.machine() in ("x86_64", "AMD64") else total
    return max(1, min(found, logical))


def cpu_info() -> dict[str, Any]:
    """CPU model, the SIMD features llama.cpp uses, architecture and core counts."""
    cpu = _cpu_mac() if platform.system() == "Darwin" else _cpu_linux()
    cpu.update(
        {
            "arch": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "physical_cores": physical_cores(),
        }
    )
    return cpu
