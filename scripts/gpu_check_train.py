"""GPU check: the environment record, and parts c and d (QLoRA ORPO then merge; the benchmark).

Part c (`qlora`) trains the bundled tiny Llama with ORPO for 10 steps through the command line as a
user would (`preftune orpo --use_peft --load_in_4bit --merge ...`: 4-bit NF4 base through
bitsandbytes, a LoRA adapter, then `preftune.apps.merge.merge_adapter` into the full-precision
base), and checks the merged model: no quantization left in it, and its logits equal the
full-precision base with the adapter applied. Without bitsandbytes it is skipped; a dry run (CPU)
runs the same command without --load_in_4bit, so the control flow is still exercised.

Part d (`benchmark`) runs `benchmarks/run.py --config gpu-0.5b` for ORPO and then DPO (one run.py
each, sharing the generated model, so one timing out leaves the other), preftune only (TRL too
when it is importable and time is left), and adds MFU from `scripts/gpu_check.py`'s table of peak
dense bf16 FLOP/s by GPU name.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "pyarrow",
            "bitsandbytes", "flash-attn", "kernels", "trl", "numpy", "huggingface_hub")


def _version(name: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(ctx) -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {name: _version(name) for name in PACKAGES},
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "wheels_installed_by_gpu_check_sh": os.environ.get("GPU_CHECK_WHEELS_INSTALLED", "").split() or None}
    try:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from run import source_hash

        info["preftune_source_sha256"] = source_hash(REPO / "preftune")
    except Exception as err:  # the record goes on without it
        info["preftune_source_sha256"] = f"n/a: {err}"
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), compute_capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    return info


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for key, value in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("WANDB_MODE", "disabled"), ("PYTHONUNBUFFERED", "1")):
        env.setdefault(key, value)
    return env


def run_logged(cmd: list[str], log: Path, timeout: float) -> int:
    """Run `cmd` (its own process group, killed whole at the timeout), output appended to `log`.
    Returns the exit status; raises TimeoutError at the timeout."""
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise TimeoutError(f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]} ran past {timeout:.0f} s") from None


def kill_group(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------ part c: QLoRA


def qlora(ctx) -> dict:
    from preftune.assets import tiny_dataset_files, tiny_model_path

    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if ctx.device == "cuda" and not have_bnb:
        return {"skipped": "bitsandbytes not installed"}
    quantized = ctx.device == "cuda" and have_bnb
    steps = 10 if not ctx.dry_run else 2
    out = ctx.work / "qlora"
    cmd = [sys.executable, "-m", "preftune", "orpo", "--model", tiny_model_path(),
           "--dataset", f"{tiny_dataset_files()['train']}#{4 * steps}", "--use_peft", "--lora_r", "8",
           "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "1e-4",
           "--output_dir", str(out), "--merge", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"]
    if quantized:
        cmd += ["--load_in_4bit", "--bf16", "true"]
    log = ctx.work / "qlora.log"
    t0 = time.perf_counter()
    status = run_logged(cmd, log, ctx.remaining() - 15)
    result = {"quantized_4bit": quantized, "steps": steps, "command": shlex.join(cmd[1:]),
              "train_and_merge_s": time.perf_counter() - t0}
    if not quantized:
        result["note"] = "dry run: LoRA without --load_in_4bit (bitsandbytes and a CUDA GPU are needed for 4-bit)"
    if status != 0:
        raise RuntimeError(f"preftune orpo exited with status {status}: {_tail(log, 8)}")
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [x for x in losses if x is not None]
    result.update(first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                  logged_steps=len(losses))
    result["merged"] = check_merged(Path(str(out) + "-merged"), out, tiny_model_path(), ctx.device)
    result["pass"] = bool(losses) and result["merged"]["pass"]
    return result


def check_merged(merged: Path, adapter: Path, base: str, device: str) -> dict:
    """The merged folder loads as a plain model (no quantization config) whose logits equal base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((merged / "config.json").read_text())
    dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=dtype).to(device).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    reference = reference.to(device).eval()
    ids = torch.arange(3, 35, device=device)[None]
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    diff = float((got - want).abs().max())
    return {"folder": merged.name, "quantization_config_left": "quantization_config" in config,
            "logits_max_abs_vs_base_plus_adapter": diff, "tolerance": 1e-3,
            "pass": "quantization_config" not in config and diff <= 1e-3}


# ------------------------------------------------------------------ part d: benchmark


def benchmark(ctx) -> dict:
    from gpu_check import add_mfu, peak_flops  # the runner's table (scripts/ is on sys.path)

    config = "gpu-0.5b" if not ctx.dry_run else "micro"
    peak = peak_flops(ctx.gpu_name)
    result = {"config": config, "gpu": ctx.gpu_name, "peak_bf16_flops": peak, "rows": [], "runs": []}
    impls = ["preftune"] + (["trl"] if ctx.with_trl and importlib.util.find_spec("trl") else [])
    assets = ctx.work / "bench-assets"
    log = ctx.work / "benchmark.log"
    # On a GPU one run.py per method, so a timeout in DPO leaves ORPO's row; a dry run saves a start-up.
    groups = [("orpo",), ("dpo",)] if not ctx.dry_run else [("orpo", "dpo")]
    for impl in impls:
        for methods in groups:
            method = ",".join(methods)
            if impl == "trl" and ctx.remaining() < 150:
                result["runs"].append({"impl": impl, "method": method, "skipped": "time budget spent"})
                continue
            out = ctx.work / f"bench-{impl}-{'-'.join(methods)}.json"
            cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--config", config, "--impls", impl,
                   "--methods", method, "--json", str(out), "--assets-dir", str(assets)]
            if peak:
                cmd += ["--peak-tflops", str(peak / 1e12)]
            if ctx.dry_run:
                cmd += ["--steps", "2"]
            t0 = time.perf_counter()
            run = {"impl": impl, "method": method, "command": shlex.join(cmd[1:])}
            try:
                status = run_logged(cmd, log, ctx.remaining() - 5)
                run["status"] = status
            except TimeoutError as err:
                run["error"] = str(err)
            run["wall_s"] = time.perf_counter() - t0
            if out.exists():
                data = json.loads(out.read_text())
                result["machine"] = data.get("machine")
                result["steps"], result["warmup_steps"] = data.get("steps"), data.get("warmup_steps")
                result["rows"] += [add_mfu(row, peak) for row in data["rows"]]
            elif "error" not in run:
                run["error"] = f"run.py exited with status {run.get('status')} and wrote no results: {_tail(log, 6)}"
            result["runs"].append(run)
    ok = [r for r in result["rows"] if "error" not in r]
    if not ok:
        raise RuntimeError("no benchmark row ran: " + "; ".join(r.get("error", "") for r in result["runs"] + result["rows"]))
    result["pass"] = len(ok) == len(result["rows"]) and len(ok) >= 2
    return result
