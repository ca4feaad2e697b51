#!/usr/bin/env bash
# Rewrite constraints.txt, the versions scripts/bootstrap.sh installs.
#   bash scripts/update_constraints.sh               # newest releases pyproject.toml's ranges allow
#   bash scripts/update_constraints.sh --freeze DIR  # the versions in the venv DIR, e.g. .venv
# The first builds a throwaway venv (torch==$TORCH_VERSION, CPU wheel, then ".[dev]" without
# constraints) and freezes it. Then: bash scripts/test.sh, and commit constraints.txt with the
# test result; bootstrap reinstalls every .venv whose constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
pip_args=(--quiet --disable-pip-version-check)

if [ "${1:-}" = --freeze ]; then
    venv=${2:?"usage: $0 [--freeze VENV_DIR]"}
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    venv=$tmp/venv
    echo "update_constraints: creating a throwaway venv in $venv" >&2
    "$PYTHON" -m venv "$venv"
    echo "update_constraints: installing torch==$TORCH_VERSION" >&2
    "$venv/bin/python" -m pip install "${pip_args[@]}" "torch==$TORCH_VERSION"
    echo "update_constraints: installing .[dev] with the newest allowed releases" >&2
    "$venv/bin/python" -m pip install "${pip_args[@]}" ".[dev]"
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "update_constraints: $venv is not a virtual environment (no bin/python)" >&2
    exit 2
fi

{
    cat <<'HEADER'
# The versions the test suite was run with: scripts/bootstrap.sh installs with
# `pip install -c constraints.txt`, so a fresh machine gets exactly these. pyproject.toml keeps
# the open ranges for users who install ddrnet into their own environment.
# To move to newer releases: bash scripts/update_constraints.sh (rebuilds this file from a
# throwaway venv with the newest releases the ranges allow), run bash scripts/test.sh, commit.
# torch: the CPU wheel (e.g. 2.13.0+cpu) satisfies the pin without its local label.
HEADER
    # Not ddrnet itself; torch's local label (+cpu) dropped so that the pin fits any build.
    "$venv/bin/python" -m pip freeze --disable-pip-version-check --exclude ddrnet \
        | grep -v -e '^#' -e '^-e ' \
        | sed 's/^\(torch[a-z]*==[^+]*\)+.*$/\1/'
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "update_constraints: wrote constraints.txt ($(grep -c '==' constraints.txt) pins)" >&2
