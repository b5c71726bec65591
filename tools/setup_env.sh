#!/usr/bin/env bash
# Sets up everything on a fresh machine: a venv in .venv, pinned torch/torchvision, DALI and the other
# dependencies, then builds supcon_fast._C in place (with the CUDA kernels when a toolkit is found).
# Idempotent: a second run reuses the venv and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q "setuptools>=64" wheel ninja
# The package with its runtime and test dependencies; --no-build-isolation builds against the torch above.
MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP install -q --no-build-isolation -e ".[test]"
.venv/bin/python - <<'PY'
import torch, supcon_fast
from supcon_fast import ops
print(f"supcon_fast ready: torch {torch.__version__}, fused CPU kernel: {ops.has_kernel('cpu')}, "
      f"CUDA kernel compiled: {ops.has_kernel('cuda')}, GPU visible: {torch.cuda.is_available()}")
PY
