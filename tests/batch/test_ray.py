"""Issue #16 item 4: `sovcli batch --ray` on a local two-node Ray cluster (token auth on).

The head node's store holds the model; the second node's store is empty, so it gets the
model from the driver as a bundle, verified there by hash. Midway through 40 documents (the
issue asks >= 40) the second node is killed (its raylet and actors); its documents run on the
head node and every document is recorded exactly once. A driver without token auth and one
with a wrong token are refused while that run goes on (they mostly wait on Ray's retries).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray cannot be imported here (pip install 'sovcli[ray]')")

from ray_cluster import local_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m:Q4_1"
COUNT = 40


def _env(cluster_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {**os.environ, **cluster_env, "SOVCLI_NO_PROGRESS": "1", **extra}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _docs(folder: Path) -> list[str]:
    folder.mkdir()
    names = []
    for i in range(COUNT):
        name = f"claim{i:02d}.txt"
        (folder / name).write_text(
            f"Claim {i}: water damage in flat {i % 9}, reported on day {i + 1}; "
            f"estimate {i * 37 % 500} EUR."
        )
        names.append(name)
    return names


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lines(out: Path) -> list[dict]:
    if not out.exists():
        return []
    raw = out.read_bytes()
    return [json.loads(line) for line in raw.splitlines(keepends=True) if line.endswith(b"\n")]


def test_batch_across_two_nodes_survives_losing_one(
    tmp_path: Path, installed_smollm2, isolated_env: Path
) -> None:
    docs = tmp_path / "docs"
    names = _docs(docs)
    out = tmp_path / "results.jsonl"
    with local_cluster(isolated_env, tmp_path / "worker-home") as cluster:

        def command(results: Path) -> list[str]:
            return [
                sys.executable, "-m", "sovcli", "batch", MODEL, str(docs), "-o", str(results),
                "--prompt", "Summarise {name} in one sentence: {text}", "--ctx", "512",
                "--max-tokens", "4", "--parallel", "2", "--threads", "1", "--json",
                "--ray", cluster.address,
            ]  # fmt: skip

        process = _start(command(out), _env(cluster.env))
        # meanwhile, drivers without the token (each its own results file) are refused
        wrong = {**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}
        intruders = {
            name: _start(command(tmp_path / f"{name}.jsonl"), env)
            for name, env in (("no-auth", _env({}, RAY_AUTH_MODE="")), ("wrong", _env(wrong)))
        }
        try:
            deadline = time.monotonic() + 900
            while len({r["backend"] for r in _lines(out)}) < 2 or len(_lines(out)) < 10:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the second node never recorded a document"
                time.sleep(0.1)
            before = _lines(out)
            killed = cluster.kill_worker_node()
            assert killed, "the second node's raylet was not found"
            stdout, stderr = process.communicate(timeout=900)
            refusals = {name: run.communicate(timeout=300)[1] for name, run in intruders.items()}
        finally:
            for run in (process, *intruders.values()):
                if run.poll() is None:
                    run.kill()
                    run.wait()
    assert intruders["no-auth"].returncode == 2 and "RAY_AUTH_MODE=token" in refusals["no-auth"]
    assert intruders["wrong"].returncode == 5, refusals["wrong"]  # cannot join: network error
    assert "cannot join the Ray cluster" in refusals["wrong"]
    assert not _lines(tmp_path / "no-auth.jsonl") and not _lines(tmp_path / "wrong.jsonl")
    assert process.returncode == 0, stderr
    assert "model sent to ray:" in stderr  # the empty node got the model from the driver
    records = _lines(out)
    paths = [r["path"] for r in records]
    assert sorted(paths) == names  # every document exactly once
    assert all(r["status"] in ("ok", "truncated") for r in records)
    backends = {r["backend"] for r in records}
    assert len(backends) == 2  # both nodes did work
    gone = next(b for b in backends if b != records[-1]["backend"])
    after = records[len(before) :]
    assert after and gone not in {r["backend"] for r in after[2:]}  # nothing more from it
    summary = json.loads(stdout)
    assert summary["processed"] == COUNT and summary["failed"] == 0
    assert summary["requeued"] >= 1  # the documents it held ran on the head node
    assert all(r["replay"]["input"] == str(docs) for r in records)


def test_a_network_deny_policy_refuses_a_cluster_off_this_machine(
    tmp_path: Path, installed_smollm2
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[sources]\nnetwork = "deny"\n', encoding="utf-8")
    docs = tmp_path / "docs"
    _docs(docs)
    out = tmp_path / "results.jsonl"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32}
    result = subprocess.run(
        [sys.executable, "-m", "sovcli", "batch", MODEL, str(docs), "-o", str(out), "-p",
         "{text}", "--ray", "10.0.0.5:6379"],
        env=_env(auth, SOVCLI_POLICY=str(policy)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 11, result.stderr  # denied before any connection
    assert "ray://10.0.0.5:6379" in result.stderr and "Traceback" not in result.stderr
    assert not _lines(out)
