#!/usr/bin/env bash
# Run the whole test suite on CPU (two workers, one thread each), after setting up .venv.
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` leaves out the tests marked
# slow (over ~10 s each on 2 cores), `bash scripts/test.sh tests/test_models.py -k official`
# runs a few. Each run ends with its ten slowest tests, to keep the `slow` marks true.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Debian's Chromium and its driver for the browser test of `ddrnet serve`, which skips without
# them. Installed only where missing and apt-get exists, so later runs cost nothing; on CI a
# failed install is an error, so that the browser test really runs there. Only the tests need
# them: scripts/bootstrap.sh (and so the demo) never installs system packages.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } \
    && command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then
        sudo_cmd=$(command -v sudo || true)
    fi
    echo "test: installing chromium and chromium-driver with apt-get (browser test)" >&2
    apt_log=$(mktemp)
    if { [ "$(id -u)" = 0 ] || [ -n "$sudo_cmd" ]; } \
        && $sudo_cmd apt-get update -qq >"$apt_log" 2>&1 \
        && $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq chromium chromium-driver >>"$apt_log" 2>&1; then
        :
    elif [ "${CI:-}" = true ]; then
        tail -n 20 "$apt_log" >&2
        echo "test: installing chromium failed (needed by tests/test_serve.py)" >&2
        exit 1
    else
        echo "test: chromium not installed; the browser test will be skipped" >&2
    fi
    rm -f "$apt_log"
fi
exec .venv/bin/python -m pytest -n 2 --durations=10 "$@"
