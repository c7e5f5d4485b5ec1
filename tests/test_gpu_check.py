"""The GPU check (scripts/gpu_check.py) on CPU: its dry run runs every part and writes one JSON and one
markdown report with an entry per part; a part that fails (raises, or outlasts its limit) is recorded
and the others still run; MFU is the hand-computed number; the shell scripts parse.

The GPU itself is never needed: `--dry-run` runs the same parts with tiny sizes on CPU.
"""
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
ALL_PARTS = ["environment", "bf16_exactness", "flash_attention", "qlora", "benchmark"]


@pytest.fixture
def gpu_check(monkeypatch):
    """scripts/ is a folder of scripts, not a package: import the runner by path."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    names = ("gpu_check", "gpu_check_logps", "gpu_check_train", "gpu_check_report")
    for name in names:
        sys.modules.pop(name, None)
    yield importlib.import_module("gpu_check")
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole dry run, every part, in one process (running each in its own is checked below)."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", "--in-process", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_dry_run_runs_every_part(dry_run):
    out, proc = dry_run
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log", "gpu-check.md"]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["device"] == "cpu" and report["dry_run"] is True and report["isolated"] is False
    assert list(report["parts"]) == ALL_PARTS
    for name, entry in report["parts"].items():
        assert entry["status"] == "ok", (name, entry.get("error"), entry.get("log_tail"))
        assert entry["wall_s"] > 0
        assert entry["limit_s"] > 0
    parts = {name: entry["result"] for name, entry in report["parts"].items()}
    assert report["environment"]["packages"]["torch"] and report["environment"]["cuda_available"] is False

    exact = parts["bf16_exactness"]
    assert set(exact["cases"]) == {"fp32", "bf16 autocast, fp32 weights", "bf16 autocast, bf16 weights",
                                   "lists (4 answers), fp32", "lists (4 answers), bf16 autocast"}
    packed = {"prefix-shared", "prefix-shared, padding-free"}
    assert set(exact["cases"]["lists (4 answers), fp32"]) == packed
    assert all(d["pass"] for d in exact["cases"]["lists (4 answers), fp32"].values())
    fast = {"chunked (closed-form head backward)", "chunked (checkpointed chunks)", "chunked (chunk size 4)",
            "prefix-shared", "prefix-shared, padding-free"}
    assert set(exact["cases"]["fp32"]) == fast
    assert set(exact["cases"]["bf16 autocast, fp32 weights"]) == fast | {"plain vs fp32"}
    assert exact["pass"] is True and exact["path"] == "log-probs: prefix-shared packed rows (sdpa)"
    # fp32 on CPU: the fast paths equal the plain one to rounding.
    assert all(d["value_max_abs"] < 1e-3 and d["grad_rel_norm"] < 1e-4 for d in exact["cases"]["fp32"].values())

    flash = parts["flash_attention"]
    assert flash["paths"]["flash_attention_2"]["default"].startswith("log-probs: chunked causal; prefix sharing off: "
                                                                     "attention implementation 'flash_attention_2'")
    assert "padding-free" in flash["paths"]["flash_attention_2"]["padding_free"]
    assert flash["available"]["sdpa flash kernel"]["applicable"] is False
    assert flash["ran_with"].startswith("sdpa (dry run")
    assert set(flash["trainer_steps"]) == {"orpo"} and flash["pass"] is True  # a dry run: ORPO's step only
    assert flash["trainer_steps"]["orpo"]["finite_loss"] and "padding-free" in flash["trainer_steps"]["orpo"]["path"]

    qlora = parts["qlora"]
    assert qlora["quantized_4bit"] is False and "dry run" in qlora["note"] and qlora["logged_steps"] == 2
    assert qlora["merged"]["quantization_config_left"] is False and qlora["pass"] is True

    bench = parts["benchmark"]
    assert bench["config"] == "micro" and bench["peak_bf16_flops"] is None
    assert [(r["impl"], r["method"]) for r in bench["rows"]] == [("preftune", "orpo"), ("preftune", "dpo")]
    for row in bench["rows"]:
        assert row["tokens_per_s"] > 0 and row["mfu"] is None  # no peak for a CPU
        n, tps = row["matmul_params"], row["tokens_per_s"]
        assert row["model_flops_per_s"] == pytest.approx((8 if row["method"] == "dpo" else 6) * n * tps)
        # the worker's own count (benchmarks/worker.py) agrees with the runner's
        assert row["model_flops_per_s"] == pytest.approx(row["model_tflops_per_s"] * 1e12)


def test_markdown_report_has_the_tables(dry_run):
    out, proc = dry_run
    md = (out / "gpu-check.md").read_text()
    assert md.strip() in proc.stdout  # printed at the end as well
    assert "| part | status | check | wall s | detail |" in md
    for name in ALL_PARTS:
        assert f"| {name} | ok |" in md
    assert "| fp32 | prefix-shared | " in md and "| bf16 autocast, bf16 weights | chunked (chunk size 4) |" in md
    bench_header = "| impl | method | tokens/s | s/step | peak MiB (GPU; CPU: RSS) | model TFLOP/s | MFU | padding |"
    assert bench_header in md
    lines = md.splitlines()
    rows = lines[lines.index(bench_header) + 2:lines.index(bench_header) + 4]
    assert [r.split("|")[1:3] for r in rows] == [[" preftune ", " orpo "], [" preftune ", " dpo "]]
    assert all(r.split("|")[7].strip() == "n/a" for r in rows)  # MFU: no peak known for a CPU


def test_a_failing_part_is_recorded_and_the_others_run(gpu_check, tmp_path, monkeypatch):
    calls = []

    def ok(ctx):
        calls.append("ok")
        return {"pass": True}

    def boom(ctx):
        calls.append("boom")
        raise ValueError("the kernel said no")

    def skipped(ctx):
        calls.append("skipped")
        return {"skipped": "bitsandbytes not installed"}

    monkeypatch.setattr(gpu_check, "PARTS", {"first": ("x:ok", 30), "second": ("x:boom", 30),
                                             "third": ("x:skipped", 30), "fourth": ("x:ok", 30)})
    monkeypatch.setattr(gpu_check, "_function", lambda name: {"first": ok, "second": boom, "third": skipped,
                                                               "fourth": ok}[name])
    assert gpu_check.main(["--dry-run", "--in-process", "--out", str(tmp_path)]) == 0
    assert calls == ["ok", "boom", "skipped", "ok"]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    parts = report["parts"]
    assert [parts[n]["status"] for n in ("first", "second", "third", "fourth")] == ["ok", "error", "skipped", "ok"]
    assert parts["second"]["error"] == "ValueError: the kernel said no"
    assert "raise ValueError" in parts["second"]["traceback_tail"] and "boom" in parts["second"]["traceback_tail"]
    assert parts["third"]["reason"] == "bitsandbytes not installed"
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| second | error |  |" in md and "ValueError: the kernel said no" in md
    assert "| first | ok | pass |" in md and "| third | skipped |  |" in md


def test_isolated_part_failure_and_timeout(gpu_check, tmp_path, monkeypatch):
    """In its own process: a part's result comes back; an injected failure is recorded with its traceback;
    a part past its limit is killed and recorded as a timeout; the budget skips what no longer fits."""
    ctx = gpu_check.Context("cpu", True, tmp_path, time.monotonic() + 60)
    log = tmp_path / "log"
    ok = gpu_check.run_isolated("environment", ctx, 60, log)
    assert ok["status"] == "ok" and ok["result"]["cuda_available"] is False
    assert ok["process_wall_s"] >= ok["wall_s"] > 0
    (tmp_path / "environment.result.json").unlink()
    monkeypatch.setenv("GPU_CHECK_FAIL", "environment")
    failed = gpu_check.run_isolated("environment", ctx, 60, log)
    assert failed["status"] == "error" and failed["error"].startswith("RuntimeError: injected failure")
    assert "GPU_CHECK_FAIL" in failed["log_tail"] or "injected failure" in failed["traceback_tail"]
    monkeypatch.delenv("GPU_CHECK_FAIL")
    (tmp_path / "environment.result.json").unlink()
    slow = gpu_check.run_isolated("environment", ctx, 0.3, log)  # importing torch alone takes longer
    assert slow["status"] == "timeout" and "0 s" in slow["error"]

    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--parts", "environment,qlora", "--budget", "5"]) == 0
    report = json.loads((out / "gpu-check.json").read_text())
    assert {n: e["status"] for n, e in report["parts"].items()} == {"environment": "skipped", "qlora": "skipped"}
    assert report["parts"]["qlora"]["reason"].startswith("time budget spent")


def test_mfu_by_hand(gpu_check):
    # N = 1e8 matmul parameters at 10,000 tokens/s: ORPO 6·N·t = 6e12 FLOP/s; DPO adds the reference
    # forward, (6 + 2)·N·t = 8e12. On an H100 SXM (989e12 peak): 6e12 / 989e12 = 0.0060667..., 8e12 / 989e12
    # = 0.0080889...; on an A100 (312e12): 6e12 / 312e12 = 0.0192307...; with LoRA 4·N·t = 4e12.
    assert gpu_check.model_flops_per_s(10**8, 10_000.0, reference_forward=False) == 6e12
    assert gpu_check.model_flops_per_s(10**8, 10_000.0, reference_forward=True) == 8e12
    assert gpu_check.model_flops_per_s(10**8, 10_000.0, reference_forward=False, lora=True) == 4e12
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("NVIDIA H200") == 989e12
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.peak_flops("NVIDIA GeForce RTX 4090") is None and gpu_check.peak_flops(None) is None
    assert gpu_check.mfu(6e12, 989e12) == pytest.approx(0.0060667, rel=1e-4)
    assert gpu_check.mfu(6e12, None) is None
    orpo = gpu_check.add_mfu({"method": "orpo", "matmul_params": 10**8, "tokens_per_s": 10_000.0}, 989e12)
    dpo = gpu_check.add_mfu({"method": "dpo", "matmul_params": 10**8, "tokens_per_s": 10_000.0}, 312e12)
    assert orpo["mfu"] == pytest.approx(0.0060667, rel=1e-4)
    assert dpo["mfu"] == pytest.approx(8e12 / 312e12) and dpo["mfu"] == pytest.approx(0.025641, rel=1e-4)
    assert gpu_check.add_mfu({"method": "dpo", "error": "x"}, 989e12) == {"method": "dpo", "error": "x"}


@pytest.mark.parametrize("script", ["gpu_check.sh", "fetch_gpu_wheels.sh"])
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
