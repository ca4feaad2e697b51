#!/usr/bin/env bash
# The main job on the bundled defaults, after setting up .venv: segment the bundled demo
# street frames with the bundled CamVid model; overlays go to predictions/, latencies are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/ddrnet predict --save labels overlay side -o predictions "$@"
