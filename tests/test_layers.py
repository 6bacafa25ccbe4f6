"""Layers only point down: an ast walk over every sovcli module checks each import.

Data flows one way, source -> store -> engine -> front end. A module may import its own
package and any LOWER rank; never a peer, never a higher rank, never another package's
private (underscore) module or name. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "sovcli"

# Lowest first. Each key is a top-level unit: a module (`sovcli.errors`) or a package.
RANKS: dict[str, int] = {
    "sovcli": 0,  # the package itself: __version__
    "sovcli.errors": 0,
    "sovcli.settings": 1,
    "sovcli.paths": 2,
    "sovcli.fsutil": 2,
    "sovcli.progress": 2,
    "sovcli.llamacpp": 3,
    "sovcli.system": 3,
    "sovcli.store": 4,
    "sovcli.convert": 5,
    "sovcli.governance": 5,  # signatures, policy, audit chain, ML-BOM: used by sources and up
    "sovcli.sources": 6,
    "sovcli.resolve": 7,
    "sovcli.engine": 7,
    "sovcli.diagnostics": 8,
    "sovcli.server": 8,
    "sovcli.batch": 8,
    "sovcli.cli": 9,
    "sovcli.__main__": 10,
}


def _unit(module: str) -> str:
    """The top-level unit a dotted module name belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "sovcli"
    return ".".join(parts[:2])


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every sovcli import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, None) for a in node.names if a.name.startswith("sovcli")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("sovcli"):
                continue
            for alias in node.names:
                # `from sovcli import llamacpp` names a module: check it as one.
                sub = f"{target}.{alias.name}"
                if target == "sovcli" and _unit(sub) in RANKS and alias.name != "__version__":
                    found.append((node.lineno, sub, None))
                else:
                    found.append((node.lineno, target, alias.name))
    return found


def _private(name: str) -> bool:
    """`_name` is private; `__dunder__` names (`__version__`, `__init__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _violations(root: Path = PACKAGE_ROOT) -> list[str]:
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        unit = _unit(module)
        if unit not in RANKS:
            problems.append(f"{module}: no rank in tests/test_layers.py (add it)")
            continue
        for line, target, name in _imports(path, module):
            where = f"{path.relative_to(root.parent)}:{line}"
            target_unit = _unit(target)
            if target_unit not in RANKS:
                problems.append(f"{where}: imports {target}, which has no rank")
                continue
            private_module = any(_private(p) for p in target.split("."))
            if target != module and (
                _private(name or "") or (target_unit != unit and private_module)
            ):
                problems.append(f"{where}: imports a private name of {target}: {name or target}")
            if target_unit == unit:
                continue
            if RANKS[target_unit] >= RANKS[unit]:
                kind = "a peer" if RANKS[target_unit] == RANKS[unit] else "a higher layer"
                problems.append(f"{where}: {unit} imports {target_unit}, {kind}")
    return problems


def test_layers_only_point_down() -> None:
    problems = _violations()
    assert not problems, "imports that break the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from sovcli.cli.main import app\n", "sovcli.store imports sovcli.cli, a higher layer"),
        (
            "from sovcli.sources import catalog\n",
            "sovcli.store imports sovcli.sources, a higher layer",
        ),
        ("from sovcli.llamacpp import _on_log\n", "imports a private name of sovcli.llamacpp"),
    ],
)
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_the_check_catches_upward_and_private_imports(
    tmp_path: Path, source: str, expected: str
) -> None:
    """The walker itself: a planted upward or private import in a copy of store is reported."""
    import shutil

    copy = tmp_path / "sovcli"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "store" / "probe.py").write_text(source, encoding="utf-8")
    problems = _violations(copy)
    assert any(expected in p for p in problems), problems
