"""The command lines import only what a command uses: `--version` and `--help` start at once,
and a plain `check` needs neither DataFusion, pandas, the contract kernel's compiler nor the
writer (a fresh interpreter each time: what is already imported here proves nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("datafusion", "pandas", "polars", "numba", "llvmlite", "replicator.writer")


def imported_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    found = f"[m for m in {watched!r} if m in sys.modules]"
    code = f"import json, sys\n{statement}\nprint(json.dumps({found}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("cli", ["reconciler.cli", "replicator.cli"])
def test_the_command_lines_import_nothing_heavy(cli: str) -> None:
    watched = (*HEAVY, "deltalake", "pyarrow", "psycopg", "numpy", "adbc_driver_postgresql")
    assert imported_after(f"import {cli}", watched) == []


def test_a_plain_check_imports_no_dataframe_library_no_compiler_and_no_writer() -> None:
    # What `reconciler check` imports when it runs: the checker and how it prints.
    assert imported_after("import reconciler.check, reconciler.render", HEAVY) == []


def test_version_and_help_answer() -> None:
    script = Path(sys.executable).parent / "reconciler"
    for argv, expected in (
        (["--version"], "reconciler, version"),
        (["--help"], "Commands:"),
        (["check", "--help"], "--year-month"),
    ):
        done = subprocess.run(
            [str(script), *argv], capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == 0 and expected in done.stdout, done.stderr
