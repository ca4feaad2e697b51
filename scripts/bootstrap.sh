#!/usr/bin/env bash
# Create .venv (once) and install ddrnet with the CPU build of PyTorch, every package at the
# version pinned in constraints.txt (the versions the test suite was run with; see
# scripts/update_constraints.sh to move them). Installing torch first makes pip take the CPU
# wheel instead of a multi-GB CUDA build. The stamp holds a hash of pyproject.toml and
# constraints.txt: when either changes, the next run installs again; otherwise it finishes at
# once. Each step says what it does on stderr (the first run takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { echo "bootstrap: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.ddrnet-installed
wanted=$(cat pyproject.toml constraints.txt | .venv/bin/python -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
    torch_pin=$(grep -m1 '^torch==' constraints.txt || echo torch)
    say "installing $torch_pin (CPU wheel; the first time takes a minute or two)"
    "${pip[@]}" torch
    say "installing ddrnet and its dependencies at the versions in constraints.txt"
    "${pip[@]}" -e ".[dev]"
    echo "$wanted" >"$stamp"
    say "done: .venv is ready"
fi
