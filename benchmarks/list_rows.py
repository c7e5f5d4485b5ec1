"""`run.py --lists K`: list rows (one prompt, K scored answers, one packed row per prompt) against the same
lists expanded to their K(K-1)/2 pairs per prompt and trained as pair rows, in preftune.

Both runs of a method see the config's ``batch_size`` prompts per step — the list run as that many list rows,
the pair run as ``batch_size × K(K-1)/2`` pair rows — and the same loss (``--list_pairs all``: every two answers
make a pair, as in the expansion). Both count the same tokens per step, those of the pair run (Σ over the pairs
of prompt + chosen + rejected: `worker.list_counts`), so "pair-equivalent tokens/s" has one numerator and
the ratio of two rows' tokens/s is the ratio of their times per step.
"""
from __future__ import annotations

LIST_METHODS = ("dpo", "orpo", "cpo", "simpo")  # the families that train on list rows (KTO does not)

# --lists K: each method's list-row run and the run of the same lists expanded to pairs
LIST_COLUMNS = ["run", "method", "pair-eq tokens/step", "pair-eq tokens/s", "s/step", "peak mem MiB",
                "train Δmem MiB", "padding", "speed vs pairs", "mem vs pairs", "Δmem vs pairs"]


def list_variants(flag_sets: list[str], prompts_per_step: int, answers: int) -> list[tuple]:
    """(impl, flags, data, rows per step, name) of the two runs per flag set: lists, then their pairs."""
    per_prompt = answers * (answers - 1) // 2
    variants = []
    for flags in flag_sets:
        variants += [("preftune", flags, "lists", prompts_per_step,
                      f"preftune lists ({prompts_per_step} prompts × {answers} answers)"),
                     ("preftune", flags, "pairs", prompts_per_step * per_prompt,
                      f"preftune pairs ({prompts_per_step} prompts × {per_prompt} pairs)")]
    return variants


def add_list_ratios(rows: list[dict]) -> None:
    """--lists K: each list run ÷ the pair run of the same method and flags — speed (pair-equivalent tokens/s;
    both count the same tokens per step, so this is the pair run's s/step over the list run's), peak memory,
    train Δmem."""
    for row in rows:
        if row.get("data") != "lists" or "error" in row:
            continue
        pairs = next((r for r in rows if r.get("data") == "pairs" and r["method"] == row["method"]
                      and r["flags"] == row["flags"] and "error" not in r), None)
        if pairs is None:
            continue
        key = "peak_gpu_mib" if "peak_gpu_mib" in row else "peak_rss_mib"
        row["speed_vs_pairs"] = row["tokens_per_s"] / pairs["tokens_per_s"]
        row["mem_vs_pairs"] = row[key] / pairs[key]
        if row.get("train_rss_delta_mib") and pairs.get("train_rss_delta_mib"):
            row["train_delta_mem_vs_pairs"] = row["train_rss_delta_mib"] / pairs["train_rss_delta_mib"]


def measured_tokens_per_step(row: dict) -> float:
    """Mean tokens per measured step (the warm-up steps left out): the numerator of tokens/s per step."""
    tokens = row["tokens_per_step"][row["warmup_steps"]:]
    return sum(tokens) / len(tokens)


def format_list_table(rows: list[dict]) -> str:
    gpu = any("peak_gpu_mib" in r for r in rows)
    cols = list(LIST_COLUMNS)
    if gpu:
        cols = [("peak GPU MiB" if c == "peak mem MiB" else c) for c in cols if c not in ("train Δmem MiB", "Δmem vs pairs")]
    def cells(r: dict) -> dict:
        return {
            **shared_cells(r),
            "run": r["label"],
            "pair-eq tokens/step": f"{measured_tokens_per_step(r):.0f}",
            "pair-eq tokens/s": f"{r['tokens_per_s']:.0f}",
            "speed vs pairs": f"{r['speed_vs_pairs']:.2f}×" if "speed_vs_pairs" in r else "",
            "mem vs pairs": f"{r['mem_vs_pairs']:.2f}×" if "mem_vs_pairs" in r else "",
            "Δmem vs pairs": f"{r['train_delta_mem_vs_pairs']:.2f}×" if "train_delta_mem_vs_pairs" in r else "",
        }

    return markdown_table(cols, rows, cells)


def shared_cells(r: dict) -> dict:
    """The table cells every benchmark table shows the same way (`run.format_table` and the list table)."""
    return {
        "method": r["method"],
        "s/step": f"{r['s_per_step']:.3f}",
        "peak mem MiB": f"{r['peak_rss_mib']:.0f}",
        "peak GPU MiB": f"{r.get('peak_gpu_mib', 0):.0f}",
        "train Δmem MiB": "" if r.get("train_rss_delta_mib") is None else f"{r['train_rss_delta_mib']:.0f}",
        "padding": f"{100 * r['padding_fraction']:.1f}%",
    }


def markdown_table(cols: list[str], rows: list[dict], cells) -> str:
    """A markdown table of `rows` in columns `cols`; `cells(row)` gives a row's cells by column (a failed row: n/a)."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if "error" in r:
            row = [r["label"], r["method"], f"n/a: {r['error']}"] + [""] * (len(cols) - 3)
        else:
            values = cells(r)
            row = [values[c] for c in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
