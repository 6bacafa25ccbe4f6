"""One settings module: every variable documented, shown by doctor, read in one place."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sovcli.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sovcli"
OWN_PREFIXES = ("SOVCLI_", "HF_", "HUGGING_FACE_", "PIP_")


def _doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "sovcli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def test_every_variable_is_listed_in_docs_configuration() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert page.is_file(), "docs/configuration.md is missing"
    text = page.read_text(encoding="utf-8")
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text]
    assert not missing, f"docs/configuration.md does not list {missing}"


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_doctor_json_reports_the_settings_table_and_hides_secrets() -> None:
    result = _doctor("--json", HF_TOKEN="hf_secret_value_123", SOVCLI_DEBUG="0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["settings"]}
    assert list(rows) == [s.name for s in SETTINGS]
    assert rows["HF_TOKEN"]["value"] == "(set)"
    assert "hf_secret_value_123" not in result.stdout
    assert rows["SOVCLI_DEBUG"]["value"] == "0"
    assert all(row["meaning"] for row in rows.values())


@pytest.mark.parametrize(
    ("value", "offline"), [("1", True), ("on", True), ("no", False), ("off", False)]
)
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_doctor_reads_hf_hub_offline_through_settings(value: str, offline: bool) -> None:
    result = _doctor("--json", HF_HUB_OFFLINE=value)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["network"]["offline_mode"] is offline


def test_doctor_piped_prints_plain_lines_and_the_table() -> None:
    result = _doctor(PIP_FIND_LINKS="/opt/wheels")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line != line.rstrip()], "trailing spaces in a pipe"
    assert "SOVCLI_OFFLINE" not in result.stdout  # nothing reads it
    assert not re.search(r"\bupdate\b", result.stdout)  # there is no update command
    for entry in SETTINGS:
        row = next((line for line in lines if line.split()[:1] == [entry.name]), None)
        assert row is not None, f"doctor does not list {entry.name}"
    row = next(line for line in lines if line.split()[:1] == ["PIP_FIND_LINKS"])
    assert row.split()[1] == "/opt/wheels"
    row = next(line for line in lines if line.split()[:1] == ["SOVCLI_CATALOG"])
    assert row.split()[1] in ("-", os.environ.get("SOVCLI_CATALOG"))


def _constant_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" assignments (an env var name kept in a constant)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    found[target.id] = node.value.value
    return found


def _is_environ(node: ast.AST) -> bool:
    """`os.environ`, or a name bound to it (`environ = os.environ ...`)."""
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return True
    return isinstance(node, ast.Name) and node.id in ("environ", "env")


def _env_reads(path: Path) -> list[tuple[int, str]]:
    """(line, variable) for each read of a sovcli/hub/pip variable from the environment."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constants = _constant_strings(tree)

    def name_of(arg: ast.AST) -> str | None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.Name):
            return constants.get(arg.id)
        return None

    reads = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            is_getenv = isinstance(func, ast.Attribute) and func.attr == "getenv"
            is_get = (
                isinstance(func, ast.Attribute)
                and func.attr in ("get", "__getitem__", "pop")
                and _is_environ(func.value)
            )
            if is_getenv or is_get:
                key = name_of(node.args[0])
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _is_environ(node.value)
        ):
            key = name_of(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            key = name_of(node.left)
        if key and key.startswith(OWN_PREFIXES):
            reads.append((node.lineno, key))
    return reads


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_only_settings_reads_sovcli_hub_and_pip_variables() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "settings.py":
            continue
        offenders += [
            f"{path.relative_to(ROOT)}:{line} reads {key}" for line, key in _env_reads(path)
        ]
    assert not offenders, "read these through sovcli.settings:\n" + "\n".join(offenders)


def test_the_env_read_check_finds_reads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "KEY = 'SOVCLI_API_KEYS'\n"
        "a = os.environ.get('HF_TOKEN')\n"
        "b = os.getenv('PIP_INDEX_URL')\n"
        "c = os.environ['SOVCLI_HOME']\n"
        "d = 'HF_HUB_OFFLINE' in os.environ\n"
        "def f(env=None):\n"
        "    environ = os.environ if env is None else env\n"
        "    return environ.get(KEY)\n"
        "os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'\n"  # a write, not a read
        "e = os.environ.get('HOME')\n"
    )
    assert [key for _, key in _env_reads(sample)] == [
        "HF_TOKEN",
        "PIP_INDEX_URL",
        "SOVCLI_HOME",
        "HF_HUB_OFFLINE",
        "SOVCLI_API_KEYS",
    ]
