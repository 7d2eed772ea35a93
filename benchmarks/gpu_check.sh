#!/usr/bin/env bash
# GPU check in one command: on a machine with CUDA, run the CUDA-only tests and the pipeline
# benchmarks at real model sizes with random weights (fp16, torch.compile off and on, 1/2/4/8
# sessions) within ~8 minutes, and write everything to one JSON file.
#
#   bash benchmarks/gpu_check.sh [OUTPUT.json]      # default: test-output/gpu-check.json
#
# Without CUDA it says so and exits 0. Packages the machine lacks (diffusers, pydantic, pytest:
# benchmarks/gpu_wheels.txt, which says how to fetch them) are installed from wheels in .whl/
# into /tmp/site, without network. PYTHON picks the interpreter (default python3); GPU_CHECK_BUDGET_S
# the time budget of the tests and benchmarks together (default 440 s).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUTPUT=${1:-test-output/gpu-check.json}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is not True for $PYTHON);" \
         "nothing to check."
    exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

exec "$PYTHON" benchmarks/gpu_check.py --output "$OUTPUT" --budget-s "${GPU_CHECK_BUDGET_S:-440}"
