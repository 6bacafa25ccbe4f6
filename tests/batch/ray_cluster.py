"""A local Ray cluster of two nodes for tests and benchmarks: `ray start --head`, then a
second `ray start --address` on the same machine, token authentication on, usage stats off.

Every process it starts is found again by its private temporary folder (in its command
line, or a descendant of such a process) and killed by id at the end; nothing else is
touched. The worker node's raylet is identified by its node-manager port, so a test can kill
that one node midway.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    """A running two-node cluster: its address, the environment to reach it, its folders."""

    address: str
    env: dict[str, str]  # RAY_AUTH_MODE / RAY_AUTH_TOKEN for a driver
    temp: Path
    worker_port: int  # node-manager port of the second node

    def kill_worker_node(self) -> list[int]:
        """SIGKILL the second node's raylet and everything under it (its actors)."""
        return _kill_tree(f"--node_manager_port={self.worker_port}")


def _processes() -> dict[int, tuple[int, str]]:
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, command)
    return found


def _kill_tree(marker: str) -> list[int]:
    """Kill every process whose command line holds `marker`, and their descendants."""
    table = _processes()
    chosen = {pid for pid, (_p, cmd) in table.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _cmd) in table.items():
            if parent in chosen and pid not in chosen:
                chosen.add(pid)
                grew = True
    for pid in chosen:
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return sorted(chosen)


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        ["ray", "start", *args], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"ray start failed: {done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@contextmanager
def local_cluster(head_home: Path, worker_home: Path, cpus: int = 1) -> Iterator[LocalCluster]:
    """Two nodes of `cpus` CPUs each; the head's store is `head_home`, the worker's
    `worker_home` (each node finds models in its own SOVCLI_HOME)."""
    temp = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(24)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    base = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    port, worker_port = free_port(), free_port()
    # no log monitor: sovcli drivers do not take workers' logs (log_to_driver=False)
    common = ["--num-cpus", str(cpus), "--disable-usage-stats", "--temp-dir", str(temp),
              "--include-log-monitor", "false"]  # fmt: skip
    try:
        _ray_start(
            ["--head", "--port", str(port), "--include-dashboard", "false", *common],
            {**base, "SOVCLI_HOME": str(head_home)},
        )
        _ray_start(
            ["--address", f"127.0.0.1:{port}", "--node-manager-port", str(worker_port),
             *common],
            {**base, "SOVCLI_HOME": str(worker_home)},
        )  # fmt: skip
        yield LocalCluster(f"127.0.0.1:{port}", auth, temp, worker_port)
    finally:
        _kill_tree(str(temp))
        _kill_tree(f"--node_manager_port={worker_port}")
        time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)
