"""Run the ``ddrnet`` command line in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys


def run_ddrnet(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m ddrnet.cli ARGUMENTS``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "ddrnet.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
