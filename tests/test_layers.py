"""Imports only point down: `replicator` is the base, `exporter` knows only the view it is handed,
`reconciler` builds on both. A lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it must never import
FORBIDDEN = {
    "replicator": {"reconciler", "exporter"},
    "exporter": {"replicator", "reconciler"},
    "reconciler": set(),
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every import statement anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add((node.lineno, str(node.args[0].value).split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, imported in sorted(imported_packages(path))
        if imported in FORBIDDEN[package]
    ]
    assert not offences, "imports that point up:\n" + "\n".join(offences)


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from reconciler.verdict import Status\n    import exporter\n")
    assert imported_packages(sample) == {(2, "reconciler"), (3, "exporter")}
