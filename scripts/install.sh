#!/usr/bin/env bash
# Installs preftune; with --test, also its test tools (pytest, ruff, gradio, playwright,
# tensorboard, wandb) and Debian's chromium for the browser test.
#
# Where it installs:
#   - inside an active environment (venv, virtualenv, conda), into that environment;
#   - otherwise into the project's own .venv (made with $PYTHON), so that a system Python
#     that refuses pip installs (PEP 668, "externally-managed-environment", the default on
#     current Debian and Ubuntu) is never touched. VENV=DIR picks another folder.
# Without a GPU, PyTorch's CPU build (torch==2.13.0) goes in first, so that the package's
# `torch` requirement is already met and pip pulls no CUDA packages.
#
#   bash scripts/install.sh [--test]   install
#   bash scripts/install.sh --which    print the Python that runs preftune (installs nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

in_environment() {  # is $1 the Python of a virtual environment or a conda environment?
  "$1" -c 'import os, sys; sys.exit(0 if sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")) else 1)'
}

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "install.sh: error: no Python at PYTHON=$PY; install Python 3.10 or newer, or pass PYTHON=/path/to/python3." >&2
  exit 2
fi
if in_environment "$PY"; then
  TARGET="$(command -v "$PY")"
else
  TARGET="$VENV/bin/python"
fi
if [ "${1:-}" = "--which" ]; then
  echo "$TARGET"
  exit 0
fi

if [ "$TARGET" = "$VENV/bin/python" ] && ! "$TARGET" -c "import pip" >/dev/null 2>&1; then
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "install.sh: error: $VENV exists and is not a virtual environment; move it away or pass VENV=another/folder." >&2
    exit 2
  fi
  echo "install.sh: not inside a virtual environment, so preftune goes into $VENV (made with $PY)"
  rm -rf "$VENV"  # a half-made one from an earlier attempt
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian and Ubuntu ship the venv module (with ensurepip) as a separate package.
    version="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
      echo "install.sh: $PY cannot make a virtual environment; installing Debian's python$version-venv"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq "python$version-venv" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "python$version-venv" >/dev/null; }
      rm -rf "$VENV"
      "$PY" -m venv "$VENV"
    else
      echo "install.sh: error: $PY cannot make a virtual environment; install python$version-venv" \
           "(sudo apt-get install python$version-venv) or activate an environment of your own, then run this again." >&2
      exit 2
    fi
  fi
fi
PY="$TARGET"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
if [ "${1:-}" != "--test" ]; then
  "$PY" -m pip install --quiet -e .
  echo "install.sh: preftune is installed for $PY"
  exit 0
fi
"$PY" -m pip install --quiet -e ".[test]"
# TRL 1.16, pinned, for tests/test_trl_parity.py (preftune's numbers against TRL's). --no-deps: TRL's
# own requirements (accelerate, datasets, transformers) are preftune's already, and letting pip
# resolve TRL's pins could move those to versions preftune is not tested with.
"$PY" -m pip install --quiet --no-deps "trl==1.16.0"
echo "install.sh: preftune and its test tools are installed for $PY"

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
