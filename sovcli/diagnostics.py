"""`sovcli doctor`'s report: what this machine offers for inference, read locally.

Built from `sovcli.system` (CPU, cores, memory), `sovcli.llamacpp.system_info()` (what the
llama.cpp build can do), `sovcli.settings.describe()` (every environment variable sovcli
reads, with its current value) and the store's folder. Nothing is sent anywhere and no
connection is attempted; the CLI only renders the dict `collect()` returns.
"""

from __future__ import annotations

import platform
import shutil
import sys
from typing import Any

from sovcli.errors import UsageError


def llama_cpp() -> dict[str, Any]:
    """llama.cpp's build: version, CPU features it uses, GPU offload (Metal), mmap, mlock."""
    from sovcli import llamacpp

    info = llamacpp.system_info()
    if info.get("available"):
        info["metal"] = bool(info.get("gpu_offload")) and platform.system() == "Darwin"
    return info


def store() -> dict[str, Any]:
    """The store's folder, whether it exists yet, and the free space where it is (or will be)."""
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


def network() -> dict[str, Any]:
    """Offline mode as every source reads it (HF_HUB_OFFLINE), and the telemetry promise."""
    from sovcli.settings import offline

    report: dict[str, Any] = {
        "offline_mode": False,
        "note": "sovcli sends no telemetry; only pull contacts a hub, mirror or index.",
    }
    try:
        report["offline_mode"] = offline()
    except UsageError as exc:  # a value that is not a boolean: say so, do not fail
        report["error"] = exc.message
    return report


def collect() -> dict[str, Any]:
    """The whole report as a dict (what `doctor --json` prints)."""
    from sovcli import __version__, settings, system

    return {
        "sovcli": __version__,
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "cpu": system.cpu_info(),
        "memory": system.memory(),
        "llama_cpp": llama_cpp(),
        "store": store(),
        "network": network(),
        "settings": settings.describe(),
    }
