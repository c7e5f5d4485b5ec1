#!/usr/bin/env bash
# preftune's GPU check on a machine with one CUDA GPU and no network (under 8 minutes on an H100/H200).
#
#   bash scripts/gpu_check.sh [gpu_check.py flags]      e.g. --out DIR, --dry-run, --parts a,b, --budget S
#
# 1. Finds a Python that has torch ($PYTHON, else python3, else python).
# 2. Installs what that Python lacks of preftune's needs (datasets and its dill and multiprocess,
#    and a pyarrow too old for that datasets) from the wheels carried in gpu_wheels/ (GPU_WHEELS=DIR
#    for another folder; made by scripts/fetch_gpu_wheels.sh on a networked machine), with
#    `pip install --no-index --no-deps` into a folder of its own (/tmp/preftune-gpu-site) put first on
#    PYTHONPATH: nothing already installed is replaced or upgraded.
# 3. Runs preftune from this checkout (PYTHONPATH, no install) and `scripts/gpu_check.py` under a total
#    time limit (GPU_CHECK_TIMEOUT seconds, default 450; the parts' own budget is 420 s).
# Writes gpu-check.json, gpu-check.md, gpu-check.log and install.log to --out (default $OUT, else ./gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

OUTDIR="${OUT:-$ROOT/gpu-check}"
prev=""
for arg in "$@"; do  # the output folder, to put install.log beside the report
  if [ "$prev" = "--out" ]; then OUTDIR="$arg"; fi
  case "$arg" in --out=*) OUTDIR="${arg#--out=}" ;; esac
  prev="$arg"
done
mkdir -p "$OUTDIR"
INSTALL_LOG="$OUTDIR/install.log"
: >"$INSTALL_LOG"

PY=""
for candidate in "${PYTHON:-}" python3 python; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" 2>/dev/null; then
    PY="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_check.sh: error: no Python with torch found (tried \$PYTHON, python3, python); set PYTHON=/path/to/python." >&2
  exit 2
fi
echo "gpu_check.sh: python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))" | tee -a "$INSTALL_LOG"

WHEELS="${GPU_WHEELS:-$ROOT/gpu_wheels}"
SITE="${GPU_CHECK_SITE:-/tmp/preftune-gpu-site}"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # Which carried wheels are needed: a distribution that is not installed, or whose installed version
  # does not meet what the carried datasets wheel requires.
  NEEDED="$("$PY" - "$WHEELS" <<'EOF' 2>>"$INSTALL_LOG"
import glob, os, re, sys, zipfile
from importlib.metadata import PackageNotFoundError, version

def norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()

wheels = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    wheels[norm(os.path.basename(path).split("-")[0])] = path
required = {}
for path in wheels.values():
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                spec = line.split(":", 1)[1].split(";")[0].strip()
                m = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)", spec)
                required.setdefault(norm(m.group(1)), []).append(m.group(2).strip("() "))
try:
    from packaging.specifiers import SpecifierSet
except ImportError:
    SpecifierSet = None
for name, path in wheels.items():
    try:
        have = version(name)
    except PackageNotFoundError:
        print(path)
        continue
    specs = [s for s in required.get(name, []) if s]
    if SpecifierSet and specs and not all(SpecifierSet(s).contains(have, prereleases=True) for s in specs):
        print(path)
EOF
)"
  if [ -n "$NEEDED" ]; then
    echo "gpu_check.sh: installing from $WHEELS into $SITE:" $(for w in $NEEDED; do basename "$w"; done) | tee -a "$INSTALL_LOG"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $NEEDED \
      >>"$INSTALL_LOG" 2>&1 || echo "gpu_check.sh: warning: pip install failed (see $INSTALL_LOG)" | tee -a "$INSTALL_LOG"
    GPU_CHECK_WHEELS_INSTALLED="$(for w in $NEEDED; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
    export GPU_CHECK_WHEELS_INSTALLED
  else
    echo "gpu_check.sh: every carried wheel is already installed at a suitable version" | tee -a "$INSTALL_LOG"
  fi
elif ! "$PY" -c "import datasets" 2>/dev/null; then
  echo "gpu_check.sh: warning: datasets is not installed and no wheels were found in $WHEELS; run" \
       "scripts/fetch_gpu_wheels.sh on a networked machine and carry gpu_wheels/ (the parts that train will fail)." \
       | tee -a "$INSTALL_LOG"
fi
"$PY" -c "import datasets, preftune; print('gpu_check.sh: datasets', datasets.__version__, '- preftune from', preftune.__file__)" \
  2>&1 | tail -1 | tee -a "$INSTALL_LOG"

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-450}" "$PY" scripts/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "gpu_check.sh: stopped at GPU_CHECK_TIMEOUT=${GPU_CHECK_TIMEOUT:-450} s; the report holds the parts that finished." >&2
fi
exit "$status"
