"""A few minutes on one GPU, made to count: preftune's GPU checks, one JSON and one markdown report.

    python scripts/gpu_check.py                      # on a CUDA machine; writes $OUT (else ./gpu-check)
    python scripts/gpu_check.py --dry-run            # every part on CPU with tiny sizes (what CI runs)
    python scripts/gpu_check.py --parts bf16_exactness,benchmark --budget 300 --out DIR

`bash scripts/gpu_check.sh` installs what the GPU machine lacks from carried wheels first and then
runs this. Parts, in order, each fail-soft (an error, a timeout or a crash is recorded with its
traceback's or log's tail, and the next part runs), each with its own time limit inside the total
budget, each in a process of its own (`--in-process` runs them in this one, for tests), each
recording its wall time:

  environment      versions (torch, transformers, peft, accelerate, ...), GPU, memory, CUDA, driver
  bf16_exactness   chunked log-prob head and prefix sharing vs the plain computation, bf16 autocast
  flash_attention  which flash kernels exist, the log-prob path under each attention implementation,
                   padding-free flash vs padded sdpa, one ORPO and one DPO step with flash
  qlora            ORPO 10 steps on a 4-bit base (bitsandbytes), then merge; skipped without bitsandbytes
  benchmark        benchmarks/run.py --config gpu-0.5b, ORPO and DPO: tokens/s, peak memory, MFU

MFU = model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s (`PEAK_BF16_FLOPS`; unknown GPU: null),
model FLOP/s = (6·N, + 2·N for DPO's reference forward)·tokens/s with N the parameters of every
matrix multiply (benchmarks/README.md); attention's own FLOPs are not counted.

GPU_CHECK_FAIL=part[,part] makes those parts raise (to see the fail-soft report).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# part -> (module:function, time limit in seconds on a GPU)
PARTS = {
    "environment": ("gpu_check_train:environment", 60),
    "bf16_exactness": ("gpu_check_logps:bf16_exactness", 90),
    "flash_attention": ("gpu_check_logps:flash_attention", 120),
    "qlora": ("gpu_check_train:qlora", 150),
    "benchmark": ("gpu_check_train:benchmark", 330),
}
DEFAULT_BUDGET_S = 420  # the python part; gpu_check.sh's installs come on top (the whole: under 8 minutes)
MIN_PART_S = 10  # a part is not started with less than this left

# Peak dense bf16 tensor-core FLOP/s by GPU name (NVIDIA's data sheets; sparsity not counted).
# Matched in order on torch.cuda.get_device_name(): the first entry whose words all occur wins.
PEAK_BF16_FLOPS = (
    (("H200",), 989e12),
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    (("A100",), 312e12),
)


def peak_flops(gpu_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name, or None when it is not in the table."""
    name = (gpu_name or "").upper()
    for words, flops in PEAK_BF16_FLOPS:
        if all(w in name for w in words):
            return flops
    return None


def model_flops_per_s(matmul_params: int, tokens_per_s: float, reference_forward: bool, lora: bool = False) -> float:
    """(6·N, or 4·N with LoRA's frozen weights; + 2·N for a reference forward) · tokens/s."""
    per_token = (4 if lora else 6) * matmul_params + (2 * matmul_params if reference_forward else 0)
    return per_token * tokens_per_s


def mfu(flops_per_s: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s ÷ peak (None when either is unknown)."""
    if flops_per_s is None or not peak:
        return None
    return flops_per_s / peak


def add_mfu(row: dict, peak: float | None) -> dict:
    """A benchmark row with `model_flops_per_s` and `mfu` from this module's table (DPO: reference forward counted)."""
    row = dict(row)
    if "error" in row or "matmul_params" not in row:
        return row
    row["model_flops_per_s"] = model_flops_per_s(row["matmul_params"], row["tokens_per_s"], row["method"] in ("dpo", "kto"))
    row["mfu"] = mfu(row["model_flops_per_s"], peak)
    return row


# ------------------------------------------------------------------ running the parts


@dataclass
class Context:
    """What a part is given: where it runs, how big, where to write, and when it must be done."""

    device: str
    dry_run: bool
    work: Path
    deadline: float  # time.monotonic() by which the part must be done
    with_trl: bool = True
    sizes: object = field(default=None)

    def __post_init__(self):
        if self.sizes is None:
            from gpu_check_logps import DRY_SIZES, GPU_SIZES

            self.sizes = DRY_SIZES if self.dry_run else GPU_SIZES

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def gpu_name(self) -> str | None:
        if self.device != "cuda":
            return None
        import torch

        return torch.cuda.get_device_name(0)


def _function(name: str):
    import importlib

    module, fn = PARTS[name][0].split(":")
    return getattr(importlib.import_module(module), fn)


def run_part(name: str, ctx: Context) -> dict:
    """Run one part here: {"status": ok | skipped | error, "result" | "error", "traceback_tail", "wall_s"}."""
    t0 = time.perf_counter()
    entry: dict = {}
    try:
        if name in os.environ.get("GPU_CHECK_FAIL", "").split(","):
            raise RuntimeError(f"injected failure (GPU_CHECK_FAIL={os.environ['GPU_CHECK_FAIL']})")
        result = _function(name)(ctx)
        if isinstance(result, dict) and "skipped" in result:
            entry = {"status": "skipped", "reason": result["skipped"]}
        else:
            entry = {"status": "ok", "result": result}
    except Exception as err:
        entry = {"status": "error", "error": f"{type(err).__name__}: {str(err).strip()[:2000]}",
                 "traceback_tail": "".join(traceback.format_exc().splitlines(True)[-12:])}
    entry["wall_s"] = round(time.perf_counter() - t0, 3)
    return entry


def run_isolated(name: str, ctx: Context, limit: float, log: Path) -> dict:
    """Run one part in a process of its own (a CUDA fault or a hang ends that part only)."""
    from gpu_check_train import _env, _tail, kill_group

    result_path = ctx.work / f"{name}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--device", ctx.device,
           "--work", str(ctx.work), "--result", str(result_path), "--deadline", repr(ctx.deadline)]
    cmd += ["--dry-run"] if ctx.dry_run else []
    cmd += [] if ctx.with_trl else ["--no-trl"]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n===== {name} =====\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code = None
    wall = round(time.perf_counter() - t0, 3)
    if result_path.exists():
        entry = json.loads(result_path.read_text())
    elif code is None:
        entry = {"status": "timeout", "error": f"stopped after its time limit of {limit:.0f} s"}
    else:
        entry = {"status": "error", "error": f"the part's process exited with status {code} and wrote no result"}
    if entry["status"] in ("error", "timeout"):
        entry["log_tail"] = _tail(log, 25)
    entry["process_wall_s"] = wall
    return entry


def worker_main(args) -> int:
    # The parent's deadline: CLOCK_MONOTONIC is the same in every process of the machine (Linux).
    deadline = args.deadline if args.deadline is not None else time.monotonic() + 600
    ctx = Context(args.device, args.dry_run, Path(args.work), deadline, not args.no_trl)
    entry = run_part(args.worker, ctx)
    Path(args.result).write_text(json.dumps(entry, indent=2, default=str))
    return 0


def resolve_device(requested: str, dry_run: bool) -> tuple[str, bool, str | None]:
    """(device, dry_run, note): --dry-run and --device cpu are the same thing."""
    if dry_run or requested == "cpu":
        return "cpu", True, None
    import torch

    if torch.cuda.is_available():
        return "cuda", False, None
    if requested == "cuda":
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA GPU.")
    return "cpu", True, "torch sees no CUDA GPU: this is a dry run on CPU with tiny sizes"


def run_all(args) -> dict:
    device, dry_run, note = resolve_device(args.device, args.dry_run)
    out = Path(args.out or os.environ.get("OUT") or "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    names = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown part {', '.join(unknown)}; the parts are {', '.join(PARTS)}.")
    report = {"command": "python scripts/gpu_check.py " + shlex.join(args.argv), "device": device,
              "dry_run": dry_run, "note": note,
              "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget, "isolated": not args.in_process, "parts": {}}
    with_trl = not args.no_trl and not dry_run  # a dry run checks preftune's control flow only
    start = time.monotonic()
    log = out / "gpu-check.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="preftune-gpu-check-") as tmp:
        for name in names:
            remaining = args.budget - (time.monotonic() - start)
            limit = min(PARTS[name][1], remaining)
            print(f"gpu_check: {name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
            if remaining < MIN_PART_S:
                entry = {"status": "skipped", "reason": f"time budget spent ({args.budget:.0f} s)", "wall_s": 0.0}
            else:
                work = Path(tmp) / name
                work.mkdir()
                ctx = Context(device, dry_run, work, time.monotonic() + limit, with_trl)
                entry = run_part(name, ctx) if args.in_process else run_isolated(name, ctx, limit, log)
                _append_logs(work, log)
            entry["limit_s"] = round(limit, 1)
            report["parts"][name] = entry
            print(f"gpu_check: {name}: {entry['status']} in {entry.get('wall_s', entry.get('process_wall_s'))} s",
                  file=sys.stderr, flush=True)
            report["total_wall_s"] = round(time.monotonic() - start, 3)
            write_outputs(report, out)  # after every part: what is done survives a crash of the next
    return report


def _append_logs(work: Path, log: Path) -> None:
    with open(log, "a") as f:
        for path in sorted(work.glob("*.log")):
            f.write(f"\n----- {path.name} -----\n{path.read_text(errors='replace')[-20000:]}")


def markdown_of(report: dict) -> str:
    from gpu_check_report import markdown

    return markdown(report)


def write_outputs(report: dict, out: Path) -> None:
    env = report["parts"].get("environment", {}).get("result")
    if env:
        report["environment"] = env
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu-check.md").write_text(markdown_of(report))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (default: $OUT if set, else ./gpu-check)")
    p.add_argument("--dry-run", action="store_true", help="every part on CPU with tiny sizes (the same as --device cpu)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--parts", default=None, help=f"comma-separated subset of: {', '.join(PARTS)}")
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", DEFAULT_BUDGET_S)),
                   help=f"total seconds for all parts (default {DEFAULT_BUDGET_S}, or $GPU_CHECK_BUDGET)")
    p.add_argument("--in-process", action="store_true", help="run the parts in this process (no isolation)")
    p.add_argument("--no-trl", action="store_true", help="never benchmark TRL, even when it is importable")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    report = run_all(args)
    print(markdown_of(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
