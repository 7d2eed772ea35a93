#!/usr/bin/env bash
# Installs what the tests need (a venv with requirements-dev.txt, Debian's chromium) and runs
# every check: ruff, the import-linter contracts, and the whole pytest suite.
# Usage: bash scripts/test.sh [extra pytest args]
#        bash scripts/test.sh --repeat N [pytest args]   run the tests N times in a row, stopping
#                                                        at the first failing run (flake hunting)
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=1
if [ "${1:-}" = "--repeat" ]; then
    REPEAT=${2:?--repeat needs a count}
    shift 2
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "== installing requirements-dev.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""
apt_install() {  # Debian packages the tests drive (once; several engineers may share apt)
    if [ -z "$APT_UPDATED" ]; then
        flock /tmp/apt.lock $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock $SUDO apt-get install -y -qq "$@" >/dev/null
}
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian chromium (browser tests)"
    apt_install chromium
fi
# Third-party WHIP/WHEP clients (tests/test_whip_clients.py): GStreamer's webrtcbin for the
# system python, and Debian's simple-whip-client (it aborts on Debian 12; the test says so).
GST_PACKAGES="python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
    simple-whip-client"
# shellcheck disable=SC2086
if ! dpkg -s $GST_PACKAGES >/dev/null 2>&1; then
    echo "== installing GStreamer webrtcbin and simple-whip-client (WHIP/WHEP client tests)"
    # shellcheck disable=SC2086
    apt_install $GST_PACKAGES
fi

echo "== ruff"
.venv/bin/ruff check .
echo "== import-linter"
.venv/bin/lint-imports
for run in $(seq 1 "$REPEAT"); do
    [ "$REPEAT" -eq 1 ] && echo "== pytest" || echo "== pytest, run $run of $REPEAT"
    set +e
    .venv/bin/python -m pytest "$@"
    status=$?
    set -e
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure" >&2
        exit 1
    fi
    if [ "$status" -ne 0 ]; then
        [ "$REPEAT" -eq 1 ] || echo "run $run of $REPEAT failed" >&2
        exit "$status"
    fi
done
