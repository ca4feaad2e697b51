"""The repository stays as ruff (pinned in constraints.txt) checks and formats it, so a
change that forgets `ruff check --fix` or `ruff format` fails here rather than in review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the repository tracks, not whatever else a checkout holds (scratch scripts, runs).
PATHS = ["src", "tests", "scripts", "benchmarks", "README.md", "ARCHITECTURE.md"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_finds_nothing_to_change(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
