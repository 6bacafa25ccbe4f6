"""Air-gapped operation: with a model in the store, run, serve and batch work in a network
namespace that has only loopback, and make no IP connection at all (strace shows every
`connect()`). This is what a regulated site checks before it lets a tool near its data.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,  # sovcli run/serve/batch subprocesses on the real model
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("strace")),
        reason="needs root, unshare and strace to build an offline network namespace",
    ),
]

IP_CONNECT = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?,.*")


def _offline(cmd: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a shell command in a fresh network namespace that has only loopback."""
    wrapped = ["unshare", "-n", "--", "sh", "-c", f"ip link set lo up; {cmd}"]
    return subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=timeout)


def _ip_connects(strace_log: Path) -> list[str]:
    return [m.group(0) for m in IP_CONNECT.finditer(strace_log.read_text())]


@pytest.fixture
def offline_env(installed_smollm2, isolated_env: Path) -> dict[str, str]:
    """The test's environment with the hub left at its public default: any attempt to reach
    it (or to resolve a name) would show as an IP connect in the trace."""
    env = dict(os.environ)
    env.pop("HF_ENDPOINT", None)
    env.pop("HF_HUB_OFFLINE", None)
    return env


def test_run_makes_no_network_connection(offline_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "strace.log"
    cmd = (
        f"strace -f -qq -e trace=connect -o {log} {sys.executable} -m sovcli run smollm2-135m "
        "'Name a colour.' --max-tokens 8 --temperature 0"
    )
    result = _offline(cmd, offline_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no output from the model"
    assert _ip_connects(log) == []


def test_bundle_pull_makes_no_network_connection(
    offline_env: dict[str, str], tmp_path: Path
) -> None:
    """An air-gap bundle is imported (the catalog's pin checked) with no IP connection, and
    pulling it again says it is already installed."""
    bundle = tmp_path / "smollm2.tar"
    exported = subprocess.run(
        [sys.executable, "-m", "sovcli", "export", "smollm2-135m", "-o", str(bundle), "-q"],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert exported.returncode == 0, exported.stderr
    env = {**offline_env, "SOVCLI_HOME": str(tmp_path / "airgapped")}
    log = tmp_path / "strace.log"
    pull = f"{sys.executable} -m sovcli pull {bundle}"
    result = _offline(f"strace -f -qq -e trace=connect -o {log} {pull}", env)
    assert result.returncode == 0, result.stderr
    assert "pulled smollm2-135m:Q4_1" in result.stderr
    assert _ip_connects(log) == []
    again = _offline(pull, env)
    assert again.returncode == 0 and "smollm2-135m:Q4_1 is already installed" in again.stderr


def test_batch_makes_no_network_connection(offline_env: dict[str, str], tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The invoice total is 42 euros.")
    (docs / "b.md").write_text("# Memo\nThe meeting moved to Friday.")
    out = tmp_path / "results.jsonl"
    log = tmp_path / "strace.log"
    cmd = (
        f"strace -f -qq -e trace=connect -o {log} {sys.executable} -m sovcli batch smollm2-135m "
        f"{docs} -o {out} --prompt 'Summarise: {{text}}' --max-tokens 8"
    )
    result = _offline(cmd, offline_env)
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 2
    assert _ip_connects(log) == []


def test_serve_answers_on_loopback_and_connects_nowhere(
    offline_env: dict[str, str], tmp_path: Path
) -> None:
    """The server runs traced inside the namespace; a client in the same namespace asks it."""
    log = tmp_path / "strace.log"
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import json, os, signal, socket, subprocess, sys, time, urllib.request
            s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
            server = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=connect", "-o",
                {str(log)!r}, sys.executable, "-m", "sovcli", "serve", "smollm2-135m",
                "--port", str(port)], start_new_session=True)
            base = f"http://127.0.0.1:{{port}}"
            try:
                for _ in range(600):
                    try:
                        with urllib.request.urlopen(base + "/health", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        time.sleep(0.2)
                body = json.dumps({{"model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
                    "messages": [{{"role": "user", "content": "Name a colour."}}]}}).encode()
                req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                    headers={{"Content-Type": "application/json"}})
                with urllib.request.urlopen(req, timeout=120) as r:
                    answer = json.load(r)
                print(answer["choices"][0]["message"]["content"])
            finally:
                os.killpg(server.pid, signal.SIGTERM)  # strace and the server it traces
                server.wait(timeout=60)
            """
        )
    )
    result = _offline(f"{sys.executable} {driver}", offline_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "no answer from the server"
    assert _ip_connects(log) == []
