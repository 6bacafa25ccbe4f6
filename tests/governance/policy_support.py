"""Helpers of the site-policy tests: policy files, audit records, a connection counter."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def write_policy(folder: Path, text: str, name: str = "policy.toml") -> Path:
    """`text` as a policy file in `folder` (mode 0644); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


def env_for(policy: Path, **extra: str) -> dict[str, str]:
    """The environment that puts `policy` in force for a `sovcli` subprocess."""
    return {"SOVCLI_POLICY": str(policy), **extra}


def audit_records(home: Path, event: str = "policy") -> list[dict[str, Any]]:
    """Every record of `event` in the audit trail of the store `home` (oldest first)."""
    folder = Path(os.environ.get("SOVCLI_AUDIT_DIR") or home / "audit")
    records = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return sorted(records, key=lambda r: r.get("seq", 0))


def one_error_line(stderr: str) -> str:
    """The `error:` line of a failed command (asserting there is exactly one, no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


class ConnectionCounter:
    """A TCP listener on 127.0.0.1 that counts every connection made to it (and closes it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def memo_folder(parent: Path, text: str = "Quarterly figures are attached.") -> Path:
    """A folder holding one short document, for `sovcli batch`."""
    folder = parent / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memo.txt").write_text(text, encoding="utf-8")
    return folder
