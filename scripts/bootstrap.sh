#!/usr/bin/env bash
# Create .venv (once) and install ddrnet with the CPU build of PyTorch.
# Pinning torch==2.13.0 first makes pip take the CPU wheel instead of a multi-GB CUDA build;
# later runs find everything installed and finish in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.ddrnet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi
