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

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian chromium (browser tests)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
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
