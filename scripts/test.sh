#!/usr/bin/env bash
# Run the whole test suite on CPU (two workers, one thread each), after setting up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n 2 "$@"
