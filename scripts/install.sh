#!/usr/bin/env bash
# Installs preftune into the current Python environment; with --test, also its test tools
# (pytest, gradio, playwright, tensorboard, wandb) and Debian's chromium for the browser test.
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
if [ "${1:-}" != "--test" ]; then
  "$PY" -m pip install --quiet -e .
  exit 0
fi
"$PY" -m pip install --quiet -e ".[test]"

# The browser test of `preftune ui` (tests/test_ui.py) drives Debian's Chromium through
# Playwright. Install it when it is missing and we can (apt-get, root); never fail the
# install over it: without it that one test is skipped.
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    apt_log="$(mktemp)"
    apt_install() {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >>"$apt_log" 2>&1
    }
    if apt_install || { apt-get update -qq >>"$apt_log" 2>&1 && apt_install; }; then
      echo "install.sh: installed Debian's chromium (for the browser test of preftune ui)"
    else
      echo "install.sh: note: could not install chromium with apt-get, so the browser test of preftune ui will be skipped; last lines of apt's output:"
      tail -n 5 "$apt_log" | sed 's/^/  /'
    fi
    rm -f "$apt_log"
  else
    echo "install.sh: note: chromium is not installed and apt-get as root is not available here, so the browser test of preftune ui will be skipped (install chromium to run it)."
  fi
fi
