"""Broken manifests and leftovers (issue #13, findings 8 and 10): `list` and `verify` report
a model whose manifest is unreadable, `rm` removes it, and every store command sweeps what
dead sovcli processes left behind while keeping what live ones hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sovcli.cli.main import app

from .conftest import make_gguf
from .hostile import assert_refused, sovcli


@pytest.fixture
def victim(runner, tmp_path: Path, isolated_env: Path) -> Path:
    """A small model installed as victim:Q8_0; returns its directory."""
    gguf = make_gguf(tmp_path / "src" / "tiny-Q8_0.gguf", file_type=7)
    assert runner.invoke(app, ["import", str(gguf), "--name", "victim"]).exit_code == 0
    return isolated_env / "models" / "victim" / "Q8_0"


def _truncate(directory: Path) -> None:
    manifest = directory / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])


def _wrong_types(directory: Path) -> None:
    manifest = directory / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"] = "tiny-Q8_0.gguf"
    manifest.write_text(json.dumps(data))


def _gguf_outside(directory: Path) -> None:
    manifest = directory / "manifest.json"
    data = json.loads(manifest.read_text())
    data["gguf"] = "../../../../etc/passwd"
    manifest.write_text(json.dumps(data))


def _symlink_out(directory: Path) -> None:
    (directory / "tiny-Q8_0.gguf").unlink()
    (directory / "tiny-Q8_0.gguf").symlink_to("/etc/passwd")


def _deleted(directory: Path) -> None:
    (directory / "manifest.json").unlink()


@pytest.mark.parametrize(
    "damage",
    [_truncate, _wrong_types, _gguf_outside, _symlink_out, _deleted],
    ids=lambda f: f.__name__,
)
def test_broken_manifest_is_listed_fails_verify_and_can_be_removed(
    runner, victim: Path, damage
) -> None:
    damage(victim)
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert "victim:Q8_0" in listed.stdout and "BROKEN" in listed.stdout
    assert "victim:Q8_0 is broken" in listed.stderr and "sovcli rm victim:Q8_0" in listed.stderr
    rows = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [(r["model"], r["status"]) for r in rows] == [("victim:Q8_0", "broken")]

    for args in (["verify"], ["verify", "victim:Q8_0"]):
        result = runner.invoke(app, args)
        assert_refused(result, 7, "1 model(s) failed verification", "victim:Q8_0")
        assert "victim:Q8_0  manifest.json  FAILED (unreadable)" in result.stdout
    if damage is not _deleted:
        assert_refused(runner.invoke(app, ["show", "victim:Q8_0"]), 8, "victim")

    removed = runner.invoke(app, ["rm", "victim:Q8_0", "--yes"])
    assert removed.exit_code == 0, removed.output
    assert not victim.exists() and not victim.parent.exists()
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []
    assert runner.invoke(app, ["verify"]).exit_code == 0


def test_pulling_again_replaces_a_model_with_a_broken_manifest(
    runner, victim: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "victim.tar"
    assert runner.invoke(app, ["export", "victim:Q8_0", "-o", str(bundle)]).exit_code == 0
    _truncate(victim)
    again = runner.invoke(app, ["pull", str(bundle)])
    assert again.exit_code == 0, again.output
    assert "pulled victim:Q8_0" in again.stderr
    assert runner.invoke(app, ["verify", "-q"]).exit_code == 0


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from sovcli.store.layout import lock_path, partial_model_dir, work_dir
    from sovcli.store.locks import model_lock
    from sovcli.store.sweep import tracked_temp_files

    name, out = sys.argv[1], Path(sys.argv[2])
    with model_lock(lock_path(name)), tracked_temp_files() as track:
        for kind in (".bundle", ".staging"):
            work = work_dir(kind, name)
            work.mkdir(parents=True)
            (work / "model.gguf").write_bytes(b"x" * 1000)
        part = partial_model_dir(name, "Q8_0") / "model.gguf.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"y" * 1000)
        old = time.time() - 30 * 24 * 3600
        os.utime(part, (old, old))
        tmp = out / ".bundle.tar.k3j4h5.tmp"
        tmp.write_bytes(b"z" * 1000)
        track(tmp)
        print("ready", flush=True)
        time.sleep(120)
    """
)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_leftovers_of_dead_processes_are_swept_live_ones_kept(
    runner, isolated_env: Path, tmp_path: Path
) -> None:
    """A live writer (a process holding the model's lock) keeps its work folders, its old
    .part and its export temp file; once it is SIGKILLed the next store command removes
    them. Leftovers of dead writers go at once; a resumable .part stays for a week."""
    out = tmp_path / "exports"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "live", str(out)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        partial = isolated_env / "partial"
        dead = {
            ".bundle/dead@0123456789abcdef/model.gguf": 0,
            ".staging/dead@fedcba9876543210/model.gguf": 0,
            ".staging/dead@00112233445566778899.rm/model.gguf": 0,
            ".staging/0a1b2c3d4e5f/model.gguf": 2 * 3600,  # older sovcli: no owner, aged
            "dead/Q8_0/old.gguf.part": 8 * 24 * 3600,
            "dead/Q8_0/.converted.gguf.x1y2z3.tmp": 0,
        }
        kept = {
            ".staging/99aa88bb77cc/model.gguf": 0,  # no owner, but recent
            "dead/Q8_0/recent.gguf.part": 3600,  # resumable by the next pull
            "dead/Q8_0/recent.gguf.etag": 3600,
        }
        for rel, age in {**dead, **kept}.items():
            path = partial / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"w" * 500)
            if age:
                _age(path, age)
                _age(path.parent, age)
        live = _files(partial) - set(dead) - set(kept)
        assert len(live) == 4  # two work folders, an old .part, the temp-file record

        first = sovcli("list")
        assert first.returncode == 0, first.stderr
        assert "removed 6 leftover(s) of interrupted sovcli runs" in first.stderr
        assert _files(partial) == set(kept) | live
        assert (out / ".bundle.tar.k3j4h5.tmp").is_file()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)

    second = runner.invoke(app, ["verify"])
    assert second.exit_code == 0, second.output
    assert "removed 4 leftover(s)" in second.stderr
    assert _files(partial) == set(kept)
    assert list(out.iterdir()) == []
    assert not (partial / ".temp").exists() or not any((partial / ".temp").iterdir())


def test_a_model_installed_since_takes_its_downloads_with_it(
    runner, victim: Path, isolated_env: Path
) -> None:
    part = isolated_env / "partial" / "victim" / "Q8_0" / "tiny-Q8_0.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"p" * 100)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "removed 1 leftover(s)" in result.stderr
    assert not part.parent.exists()


def _kill_when(proc: subprocess.Popen, found, timeout: float = 60) -> Path:
    """SIGKILL `proc` as soon as `found()` returns a path; returns that path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = found()
        if path is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return path
        if proc.poll() is not None:
            pytest.fail("the process ended before it could be killed mid-way")
        time.sleep(0.001)
    pytest.fail("timed out")


def _first(folder: Path, pattern: str):
    """The first file matching `pattern` once something has been written to it."""

    def found() -> Path | None:
        for path in sorted(folder.glob(pattern)):
            try:
                if path.stat().st_size > 0:
                    return path
            except OSError:
                pass
        return None

    return found


@pytest.mark.slow  # exports and imports the real 98 MB model, each SIGKILLed mid-way
def test_killed_export_and_killed_bundle_pull_leave_nothing(
    installed_smollm2, isolated_env: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "sovcli", "export", "smollm2-135m", "-o", str(out / "s.tar")]
    export = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = _kill_when(export, _first(out, ".s.tar.*.tmp"))
    assert tmp.exists() and not (out / "s.tar").exists()
    swept = sovcli("list")
    assert "removed 1 leftover(s)" in swept.stderr and list(out.iterdir()) == []

    assert sovcli("export", "smollm2-135m", "-o", str(out / "s.tar"), "-q").returncode == 0
    other = tmp_path / "airgapped"
    env = {**os.environ, "SOVCLI_HOME": str(other), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sovcli", "pull", str(out / "s.tar"), "-q"]
    pull = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = _kill_when(pull, _first(other / "partial" / ".bundle", "*/*.gguf"))
    assert work.exists()
    swept = sovcli("list", "--json", env=env)
    assert swept.returncode == 0 and json.loads(swept.stdout) == []
    assert "removed 1 leftover(s)" in swept.stderr
    assert not any((other / "partial" / ".bundle").iterdir())
