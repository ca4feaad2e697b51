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


def test_layers_import_only_the_layers_below_them() -> None:
    """models <- data <- engine <- deploy <- application <- cli, as pyproject.toml's
    import-linter contract lists them: an import against the flow (a function's own import
    too) fails here, naming the importing line."""
    code = (
        "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
