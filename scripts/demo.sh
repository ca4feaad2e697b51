#!/usr/bin/env bash
# The main job on the bundled defaults, after setting up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/ddrnet models "$@"
