"""The GPU check's short markdown report, written from its JSON (scripts/gpu_check.py)."""
from __future__ import annotations


def _fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "pass" if x else "FAIL"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _verdict(entry: dict) -> str:
    if entry["status"] != "ok":
        return ""
    passed = (entry.get("result") or {}).get("pass")
    return "" if passed is None else _fmt(bool(passed))


def markdown(report: dict) -> str:
    env = report.get("environment") or {}
    pk = env.get("packages") or {}
    lines = ["# preftune GPU check", ""]
    where = env.get("gpu") or f"CPU ({'dry run' if report.get('dry_run') else report.get('device')})"
    lines.append(f"- device: {where}" + (f", {env.get('gpu_memory_gib')} GiB" if env.get("gpu") else "")
                 + (f", CUDA {env.get('torch_cuda')}" if env.get("torch_cuda") else "")
                 + (f", driver {env.get('driver')}" if env.get("driver") else ""))
    if pk:
        lines.append("- versions: " + ", ".join(f"{k} {pk.get(k)}" for k in
                                                 ("torch", "transformers", "peft", "accelerate", "datasets")))
    if report.get("note"):
        lines.append(f"- note: {report['note']}")
    lines.append(f"- total {report.get('total_wall_s', 0):.0f} s of a {report.get('budget_s', 0):.0f} s budget; "
                 f"`{report.get('command')}`")
    lines += ["", "| part | status | check | wall s | detail |", "|---|---|---|---|---|"]
    for name, entry in report["parts"].items():
        wall = entry.get("wall_s", entry.get("process_wall_s"))
        detail = entry.get("reason") or entry.get("error") or _summary(name, entry.get("result") or {})
        lines.append(f"| {name} | {entry['status']} | {_verdict(entry)} | {_fmt(wall, '.1f')} | "
                     f"{str(detail).replace('|', '/').replace(chr(10), ' ')[:300]} |")
    exact = report["parts"].get("bf16_exactness", {}).get("result")
    if exact:
        lines += ["", "## Log-prob exactness (fast path vs plain)", "",
                  "| case | path | max abs Δ value | grad rel-norm Δ | plain's own (vs fp32) | check |",
                  "|---|---|---|---|---|---|"]
        for case, paths in exact["cases"].items():
            own = paths.get("plain vs fp32")
            for path, d in paths.items():
                if path == "plain vs fp32":
                    continue
                ref = f"{own['value_max_abs']:.3g} / {own['grad_rel_norm']:.3g}" if own else ""
                lines.append(f"| {case} | {path} | {d['value_max_abs']:.3g} | {d['grad_rel_norm']:.3g} | {ref} | "
                             f"{_fmt(bool(d['pass']))} |")
        lines.append("")
        lines += [f"- tolerance, {k}: {v}" for k, v in exact.get("tolerances", {}).items()]
    bench = report["parts"].get("benchmark", {}).get("result")
    if bench:
        peak = bench.get("peak_bf16_flops")
        lines += ["", f"## Benchmark: `{bench['config']}`, {bench.get('steps')} steps ({bench.get('warmup_steps')} "
                  f"warm-up); MFU against {_fmt(peak and peak / 1e12, '.0f')} TFLOP/s peak bf16", "",
                  "| impl | method | tokens/s | s/step | peak MiB (GPU; CPU: RSS) | model TFLOP/s | MFU | padding |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            if "error" in r:
                lines.append(f"| {r.get('label', r['impl'])} | {r['method']} | n/a: {r['error']} |  |  |  |  |  |")
                continue
            mem = r.get("peak_gpu_mib", r.get("peak_rss_mib"))
            flops = r.get("model_flops_per_s")
            lines.append(f"| {r.get('label', r['impl'])} | {r['method']} | {r['tokens_per_s']:.0f} | "
                         f"{r['s_per_step']:.3f} | {_fmt(mem, '.0f')} | {_fmt(flops and flops / 1e12, '.1f')} | "
                         f"{'n/a' if r.get('mfu') is None else format(100 * r['mfu'], '.1f') + '%'} | "
                         f"{100 * r['padding_fraction']:.1f}% |")
        lines += ["", "MFU = (6·N + 2·N for DPO's reference forward)·tokens/s ÷ peak; N = parameters of every "
                  "matrix multiply (LM head included, input embedding not); attention's own FLOPs not counted."]
    return "\n".join(lines) + "\n"


def _summary(name: str, result: dict) -> str:
    if name == "environment":
        return f"python {result.get('python')}, torch CUDA {result.get('torch_cuda')}"
    if name == "bf16_exactness":
        return result.get("path", "")
    if name == "flash_attention":
        avail = result.get("available", {})
        fa = [k.split(" ")[0] for k in ("flash_attention_2 (transformers)", "flash_attention_3 (transformers)")
              if avail.get(k)]
        under = result.get("paths", {}).get("flash_attention_2", {}).get("default", "")
        return (f"flash kernels: {', '.join(fa) or 'none installed'}; under flash_attention_2: {under}; "
                f"steps ran with {result.get('ran_with')}")
    if name == "qlora":
        return (f"4-bit {result.get('quantized_4bit')}, loss {_fmt(result.get('first_loss'))} → "
                f"{_fmt(result.get('last_loss'))}, merged logits Δ "
                f"{_fmt((result.get('merged') or {}).get('logits_max_abs_vs_base_plus_adapter'))}")
    if name == "benchmark":
        return "; ".join(f"{r['method']} {r['tokens_per_s']:.0f} tok/s" for r in result.get("rows", []) if "error" not in r)
    return ""
