#!/usr/bin/env bash
# Installs preftune and its test tools into the current Python environment.
# Without a GPU, PyTorch's CPU build (torch==2.13.0) goes in first, so that the
# package's `torch` requirement is already met and pip pulls no CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
"$PY" -m pip install --quiet -e ".[test]"
