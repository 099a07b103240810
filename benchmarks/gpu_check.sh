#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one table of training, sampling and a short training run on a lent GPU.
#   bash benchmarks/gpu_check.sh                 # the whole check, about 6 minutes on one H100/H200
#   bash benchmarks/gpu_check.sh --quick --device cpu   # every part at tiny sizes (what tests/test_gpu_check.py runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-${SEMANTICA_HOME:-$PWD/.semantica}/venv/bin/python}"
export HF_HUB_OFFLINE=1
exec "$PYTHON" -m benchmarks.gpu_check "$@"
