"""Machine-dependent defaults: physical core count and offload choice."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache


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
        try:
            out = subprocess.run(
                ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=True
            ).stdout.strip()
            if out.isdigit() and int(out) > 0:
                return int(out)
        except (OSError, subprocess.SubprocessError):
            continue
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
