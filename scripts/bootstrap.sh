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
# Debian's Chromium and its driver for the browser test of `ddrnet serve`, which skips without
# them. Installed only where missing and apt-get exists, so later runs cost nothing; on CI a
# failed install is an error, so that the browser test really runs there.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } \
    && command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then
        sudo_cmd=$(command -v sudo || true)
    fi
    apt_log=$(mktemp)
    if { [ "$(id -u)" = 0 ] || [ -n "$sudo_cmd" ]; } \
        && $sudo_cmd apt-get update -qq >"$apt_log" 2>&1 \
        && $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq chromium chromium-driver >>"$apt_log" 2>&1; then
        :
    elif [ "${CI:-}" = true ]; then
        tail -n 20 "$apt_log" >&2
        echo "bootstrap: installing chromium failed (needed by tests/test_serve.py)" >&2
        exit 1
    else
        echo "bootstrap: chromium not installed; the browser test will be skipped" >&2
    fi
    rm -f "$apt_log"
fi
