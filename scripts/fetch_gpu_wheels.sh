#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels the GPU machine lacks for preftune, into gpu_wheels/
# (ignored by git), for that machine's Python (3.12, CPython, manylinux x86_64).
#
#   bash scripts/fetch_gpu_wheels.sh                     # the default set (below)
#   bash scripts/fetch_gpu_wheels.sh --no-pyarrow        # without pyarrow (~52 MiB) when the GPU machine's is recent
#   bash scripts/fetch_gpu_wheels.sh --no-pyarrow --with-bitsandbytes   # + bitsandbytes (~41 MiB) for the QLoRA part
#   bash scripts/fetch_gpu_wheels.sh NAME==VERSION ...   # more wheels (each without its dependencies)
#
# The GPU machine has torch, transformers, peft, accelerate, tokenizers, safetensors, matplotlib, and
# numpy, pandas, pyarrow, huggingface_hub, fsspec, xxhash, requests, aiohttp; it lacks `datasets` and
# its `dill` and `multiprocess`, and bitsandbytes (the QLoRA part is skipped without it). pyarrow is fetched too, in case the machine's is older than datasets
# needs: scripts/gpu_check.sh installs a carried wheel only where the distribution is missing or too
# old. Wheels are fetched without their dependencies (--no-deps), so the folder holds exactly these.
# The folder travels with the working tree (64 MiB in all, tree included): keep it under ~60 MiB.
#
# Environment: PYTHON (a Python with pip; default python3, else .venv/bin/python), GPU_WHEELS (folder,
# default gpu_wheels), GPU_PYTHON_VERSION (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${GPU_WHEELS:-gpu_wheels}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
DATASETS_VERSION="${DATASETS_VERSION:-5.2.0}"
# Versions that satisfy datasets 5.2.0's own pins (dill<0.4.2, multiprocess<0.70.20, pyarrow>=24).
PACKAGES=("datasets==$DATASETS_VERSION" "dill==0.4.1" "multiprocess==0.70.19")
WITH_PYARROW=1
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --no-pyarrow) WITH_PYARROW=0 ;;
    --with-bitsandbytes) EXTRA+=("bitsandbytes==0.50.2") ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "fetch_gpu_wheels.sh: unknown option $arg" >&2; exit 2 ;;
    *) EXTRA+=("$arg") ;;
  esac
done
[ "$WITH_PYARROW" = 1 ] && PACKAGES+=("pyarrow==26.0.1")
PACKAGES+=(${EXTRA[@]+"${EXTRA[@]}"})

PY=""
for candidate in "${PYTHON:-}" python3 .venv/bin/python; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "fetch_gpu_wheels.sh: error: no Python with pip (tried \$PYTHON, python3, .venv/bin/python)." >&2
  exit 2
fi

mkdir -p "$DEST"
echo "fetch_gpu_wheels.sh: ${PACKAGES[*]} -> $DEST/ (CPython $PYVER, manylinux x86_64)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$DEST" "${PACKAGES[@]}"

ls -l "$DEST"/*.whl
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(( (total + 1048575) / 1048576 ))
echo "fetch_gpu_wheels.sh: $DEST/ holds $(ls "$DEST"/*.whl | wc -l) wheels, $total bytes (${mib} MiB)"
if [ "$mib" -gt 60 ]; then
  echo "fetch_gpu_wheels.sh: warning: over 60 MiB; with the working tree it may pass the 64 MiB carried to the" \
       "GPU machine (try --no-pyarrow, or remove stale wheels from $DEST/)." >&2
fi
