"""preftune's benchmark suite: training throughput and peak memory, side by side with TRL.

Trains a fixed number of steps of a fixed random-init Llama-style model on synthetic
preference pairs of realistic shapes, through each implementation's own Trainer, and
prints one table row per (implementation, method):

    python benchmarks/run.py                                   # small config, ORPO and DPO, preftune and TRL
    python benchmarks/run.py --config micro --steps 2          # smoke test
    python benchmarks/run.py --preftune-flags "" --preftune-flags "--logps_chunked false"
    python benchmarks/run.py --lora 16                         # both train a rank-16 LoRA adapter
    python benchmarks/run.py --config gpu-0.5b --peak-tflops 989 --json out.json
    python benchmarks/run.py --config skewed --impls preftune \
        --preftune-flags "" --preftune-flags "--padding_free true"   # padding_free off vs on, with ratios
    python benchmarks/run.py --config small --lists 4 --methods dpo,orpo   # list rows vs the same data as pairs

Each row runs in a fresh subprocess (`worker.py`) so peak memory is that run's own.
See benchmarks/README.md for what each column means and for recorded results.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from configs import CONFIGS, METHODS  # noqa: E402
from list_rows import (LIST_METHODS, add_list_ratios, format_list_table, list_variants, markdown_table,  # noqa: E402
                       shared_cells)

COLUMNS = ["impl", "method", "tokens/s", "s/step", "peak mem MiB", "train Δmem MiB", "padding",
           "speed vs TRL", "mem vs TRL", "speed vs 1st", "mem vs 1st", "Δmem vs 1st", "MFU"]
FIRST_COLUMNS = ("speed vs 1st", "mem vs 1st", "Δmem vs 1st")  # ratios to the first preftune row of the method


# ------------------------------------------------------------------ machine


def machine_description() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    for name in ("torch", "transformers", "datasets", "accelerate", "trl", "preftune"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:
            info[name] = None
    info["preftune_source_sha256"] = source_hash(REPO / "preftune")
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except Exception:
        pass
    return info


def source_hash(folder: Path) -> str:
    """sha256 over the package's .py files (path and content): which preftune code was measured."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def describe(machine: dict) -> str:
    parts = [machine.get("gpu") or f"{machine.get('cpu', 'CPU')}, {machine.get('cpus')} cores, "
             f"{machine.get('memory_gib')} GiB"]
    parts.append(", ".join(f"{k} {machine[k]}" for k in ("python", "torch", "transformers", "trl") if machine.get(k)))
    return "; ".join(parts)


# ------------------------------------------------------------------ rows


def label(impl: str, flags: str) -> str:
    return f"{impl} {flags}".strip()


def run_row(assets: Path, config: str, impl: str, method: str, flags: str, args, steps: int, warmup: int,
            workdir: Path, data: str = "pairs", batch_size: int | None = None, name: str | None = None) -> dict:
    tag = f"{impl}-{method}-{data}-{abs(hash(flags)) % 10**6}"
    result_path, log_path = workdir / f"{tag}.json", workdir / f"{tag}.log"
    cmd = [sys.executable, str(HERE / "worker.py"), "--assets", str(assets), "--config", config, "--impl", impl,
           "--method", method, "--steps", str(steps), "--warmup", str(warmup), "--flags", flags,
           "--data", data, "--result", str(result_path)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.lora:
        cmd += ["--lora", str(args.lora)]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        cmd += ["--profile", str(Path(args.profile) / f"{label(impl, flags).replace(' ', '_')}-{method}-{data}.txt")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.timeout)
    row = {"impl": impl, "method": method, "flags": flags, "data": data}
    if result_path.exists():
        row.update(json.loads(result_path.read_text()))
    else:
        row["error"] = f"worker exited with status {proc.returncode}"
    row["label"] = label(name or impl, flags)
    if "error" in row:
        tail = log_path.read_text().strip().splitlines()[-15:]
        print(f"  {row['label']} {method}: n/a: {row['error']}\n    " + "\n    ".join(tail), file=sys.stderr)
    row["process_wall_s"] = time.perf_counter() - t0
    return row


def best_run(runs: list[dict]) -> dict:
    """Combine the repeats of one row (an error only when every run failed).

    Other processes on the machine only ever slow a step down, and the repeats train on
    the same batches in the same order, so each step's fastest time over the repeats is
    the best estimate of its undisturbed time: tokens/s and s/step are computed from
    those per-step minima. Peak memory is the median over the repeats.
    """
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    best = dict(max(ok, key=lambda r: r["tokens_per_s"]))
    best["repeats"] = len(ok)
    best["all_runs_tokens_per_s"] = [r["tokens_per_s"] for r in ok]
    best["all_runs_peak_rss_mib"] = [r["peak_rss_mib"] for r in ok]
    best["all_runs_step_times_s"] = [r["step_times_s"] for r in ok]
    same_batches = all(r["tokens_per_step"] == ok[0]["tokens_per_step"] for r in ok)
    if len(ok) > 1 and same_batches:
        fastest = [min(times) for times in zip(*(r["step_times_s"] for r in ok))]
        measured = range(best["warmup_steps"], len(fastest))
        best["step_times_s"] = fastest
        best["tokens_per_s"] = sum(best["tokens_per_step"][i] for i in measured) / sum(fastest[i] for i in measured)
        best["s_per_step"] = statistics.median(fastest[i] for i in measured)
        for key in ("peak_rss_mib", "train_rss_delta_mib", "peak_gpu_mib"):
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                best[key] = statistics.median(values)
        if "model_tflops_per_s" in best:
            scale = best["tokens_per_s"] / max(ok, key=lambda r: r["tokens_per_s"])["tokens_per_s"]
            best["model_tflops_per_s"] *= scale
            if "mfu" in best:
                best["mfu"] *= scale
    return best


def add_ratios(rows: list[dict]) -> None:
    """speed = preftune tokens/s ÷ TRL tokens/s; mem = preftune peak ÷ TRL peak (GPU memory on GPU)."""
    for row in rows:
        if row["impl"] != "preftune" or "error" in row:
            continue
        trl = next((r for r in rows if r["impl"] == "trl" and r["method"] == row["method"] and "error" not in r), None)
        if trl is None:
            continue
        key = "peak_gpu_mib" if "peak_gpu_mib" in row else "peak_rss_mib"
        row["speed_vs_trl"] = row["tokens_per_s"] / trl["tokens_per_s"]
        row["mem_vs_trl"] = row[key] / trl[key]
        if row.get("train_rss_delta_mib") and trl.get("train_rss_delta_mib"):
            row["train_delta_mem_vs_trl"] = row["train_rss_delta_mib"] / trl["train_rss_delta_mib"]


def add_ratios_to_first(rows: list[dict]) -> None:
    """With several preftune rows (--preftune-flags repeated): each one's tokens/s, peak memory and train Δmem
    ÷ those of the first preftune row of the same method (e.g. padding_free on ÷ off)."""
    if len({r["flags"] for r in rows if r["impl"] == "preftune"}) < 2:
        return
    for row in rows:
        first = next((r for r in rows if r["impl"] == "preftune" and r["method"] == row["method"]), None)
        if row["impl"] != "preftune" or "error" in row or first is None or "error" in first:
            continue
        key = "peak_gpu_mib" if "peak_gpu_mib" in row else "peak_rss_mib"
        row["speed_vs_first"] = row["tokens_per_s"] / first["tokens_per_s"]
        row["mem_vs_first"] = row[key] / first[key]
        if row.get("train_rss_delta_mib") and first.get("train_rss_delta_mib"):
            row["train_delta_mem_vs_first"] = row["train_rss_delta_mib"] / first["train_rss_delta_mib"]


def format_table(rows: list[dict]) -> str:
    show_mfu = any("mfu" in r for r in rows)
    show_ratio = any("speed_vs_trl" in r for r in rows)
    show_first = any("speed_vs_first" in r for r in rows)
    gpu = any("peak_gpu_mib" in r for r in rows)
    cols = [c for c in COLUMNS if (c != "MFU" or show_mfu) and (c not in ("speed vs TRL", "mem vs TRL") or show_ratio)
            and (c not in FIRST_COLUMNS or show_first)]
    if gpu:
        cols = [("peak GPU MiB" if c == "peak mem MiB" else c) for c in cols if c != "train Δmem MiB"]
    def cells(r: dict) -> dict:
        return {
            **shared_cells(r),
            "impl": r["label"],
            "tokens/s": f"{r['tokens_per_s']:.0f}",
            "speed vs TRL": f"{r['speed_vs_trl']:.2f}×" if "speed_vs_trl" in r else "",
            "mem vs TRL": f"{r['mem_vs_trl']:.2f}×" if "mem_vs_trl" in r else "",
            "MFU": f"{100 * r['mfu']:.1f}%" if "mfu" in r else "",
            "speed vs 1st": f"{r['speed_vs_first']:.2f}×" if "speed_vs_first" in r else "",
            "mem vs 1st": f"{r['mem_vs_first']:.2f}×" if "mem_vs_first" in r else "",
            "Δmem vs 1st": f"{r['train_delta_mem_vs_first']:.2f}×" if "train_delta_mem_vs_first" in r else "",
        }

    return markdown_table(cols, rows, cells)


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing (default: the config's)")
    p.add_argument("--methods", default="orpo,dpo")
    p.add_argument("--impls", default=None, help="default: preftune,trl (with --lists: preftune)")
    p.add_argument("--lists", type=int, default=0, metavar="K",
                   help="list rows of K scored answers per prompt against the same lists expanded to their "
                        "K(K-1)/2 pairs per prompt (preftune only): two rows per method, the config's batch_size "
                        "prompts per step in both")
    p.add_argument("--preftune-flags", action="append", default=None,
                   help="preftune config flags, e.g. \"--logps_chunked false\"; repeat for several preftune rows")
    p.add_argument("--trl-flags", default="", help="TRL config flags for the TRL rows")
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both (default off for both)")
    p.add_argument("--lora", type=int, default=0, metavar="R",
                   help="both train a LoRA adapter of rank R on every linear layer of the body (alpha 2R) "
                        "instead of every weight; DPO's reference is then the adapter-disabled model")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense TFLOP/s for MFU (default 989, H100 bf16, on a GPU config; none on CPU)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--assets-dir", default=None, help="where the model and data are written (reused when present)")
    p.add_argument("--profile", default=None, help="folder for a torch.profiler table per row (slows the runs)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per row")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every row this many times, round-robin; times are each step's fastest over the "
                        "repeats (other processes on the machine only ever slow a step down)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = CONFIGS[args.config]
    steps = args.steps or cfg.steps
    warmup = cfg.warmup_steps if args.warmup is None else args.warmup
    if steps < 2:
        print("--steps must be at least 2 (one warm-up step, one measured).", file=sys.stderr)
        return 2
    warmup = min(warmup, steps - 1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    impls_given = args.impls or ("preftune" if args.lists else "preftune,trl")
    impls = [i.strip() for i in impls_given.split(",") if i.strip()]
    bad = [m for m in methods if m not in METHODS] + [i for i in impls if i not in ("preftune", "trl")]
    if bad or not methods or not impls:
        print(f"unknown method or implementation: {', '.join(bad) or '(none given)'}; "
              f"use --methods {','.join(METHODS)} --impls preftune,trl.", file=sys.stderr)
        return 2
    if args.lists:
        if args.lists < 2:
            print(f"--lists {args.lists}: a list row needs at least 2 answers per prompt.", file=sys.stderr)
            return 2
        if impls != ["preftune"]:
            print("--lists compares preftune's list rows with pairs; only --impls preftune can train list rows.",
                  file=sys.stderr)
            return 2
        unsupported = [m for m in methods if m not in LIST_METHODS]
        if unsupported:
            print(f"--lists: method {', '.join(unsupported)} does not train on list rows; use --methods "
                  f"{','.join(LIST_METHODS)}.", file=sys.stderr)
            return 2
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        print(f"config {cfg.name} needs a CUDA GPU; on CPU use --config small or micro.", file=sys.stderr)
        return 2
    if args.peak_tflops is None and cfg.device == "cuda":
        args.peak_tflops = 989.0  # H100 SXM, dense bf16

    variants = []  # (impl, flags, data, rows per step, name)
    pairs_per_prompt = args.lists * (args.lists - 1) // 2
    if args.lists:
        variants += list_variants(args.preftune_flags or [""], cfg.batch_size, args.lists)
    for impl in impls if not args.lists else []:
        if impl == "preftune":
            variants += [("preftune", f, "pairs", None, None) for f in (args.preftune_flags or [""])]
        else:
            variants.append(("trl", args.trl_flags, "pairs", None, None))
    trl_missing = importlib.util.find_spec("trl") is None

    machine = machine_description()
    training = f"LoRA r={args.lora}" if args.lora else "full fine-tuning"
    lists_note = (f"; {args.lists} answers per prompt: list rows vs their {pairs_per_prompt} pairs per prompt"
                  if args.lists else "")
    print(f"config {cfg.name}: {cfg.description}; {training}; {steps} steps ({warmup} warm-up){lists_note}",
          file=sys.stderr)
    print(f"machine: {describe(machine)}", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="preftune-bench-"))
    try:
        from assets import build_assets

        t0 = time.perf_counter()
        assets = build_assets(cfg, steps * cfg.batch_size, args.assets_dir or tmp / "assets", answers=args.lists)
        print(f"assets ready in {time.perf_counter() - t0:.1f}s: {assets}", file=sys.stderr)
        runs: dict[tuple, list[dict]] = {}
        for repeat in range(max(1, args.repeats)):
            for method in methods:
                for impl, flags, data, batch_size, name in variants:
                    key = (method, impl, flags, data)
                    if impl == "trl" and trl_missing:
                        runs[key] = [{"impl": "trl", "method": method, "flags": flags, "label": label(impl, flags),
                                      "error": "trl is not installed (pip install --no-deps trl)"}]
                        continue
                    print(f"running {label(name or impl, flags)} {method} (run {repeat + 1}) ...", file=sys.stderr)
                    runs.setdefault(key, []).append(
                        run_row(assets, cfg.name, impl, method, flags, args, steps, warmup, tmp, data, batch_size, name))
        rows = [best_run(r) for r in runs.values()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.lists:
        add_list_ratios(rows)
    else:
        add_ratios(rows)
        add_ratios_to_first(rows)
    print(f"\nconfig {cfg.name} ({training}, {steps} steps, {warmup} warm-up{lists_note}; {describe(machine)})\n")
    print(format_list_table(rows) if args.lists else format_table(rows))
    if args.json:
        command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        out = {"command": command, "config": cfg.to_dict(), "lora_rank": args.lora, "steps": steps, "warmup_steps": warmup,
               "machine": machine, "rows": rows}
        if args.lists:
            out.update(lists=args.lists, pairs_per_prompt=pairs_per_prompt, prompts_per_step=cfg.batch_size)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
