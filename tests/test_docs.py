"""The docs cannot rot: every fenced block marked `sh runnable` in the README and docs/ is run,
line by line, against an embedded setup (a migrated database and Delta tables with a month)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fix_delta import WriteMonth

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```sh runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOCS:
        for match in BLOCK.finditer(path.read_text()):
            blocks.append((path.relative_to(ROOT).as_posix(), match.group(1)))
    return blocks


def test_docs_have_runnable_blocks() -> None:
    assert {name for name, _ in runnable_blocks()} >= {"README.md", "docs/cli.md"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("document", "block"), runnable_blocks(), ids=[name for name, _ in runnable_blocks()]
)
def test_runnable_block(
    document: str, block: str, cli_env: dict[str, str], write_month: WriteMonth, tmp_path: Path
) -> None:
    write_month("ranking_signal", "2026-10", rows=200)
    write_month("composite_signal_daily", "2026-10", rows=100)
    env = {
        **os.environ,
        **cli_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        done = subprocess.run(
            shlex.split(line),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (
            f"{document}: `{line}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
