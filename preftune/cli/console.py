"""Readable console output for command-line runs: one line per log, the numbers users watch."""
from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

# (log key, column title); keys missing from a log line are skipped
_COLUMNS = [
    ("loss", "loss"),
    ("rewards/accuracies", "acc"),
    ("rewards/ranking_accuracy", "rank_acc"),
    ("rewards/margins", "margin"),
    ("rewards/chosen", "chosen"),
    ("rewards/rejected", "rejected"),
    ("nll_loss", "nll"),
    ("log_odds_chosen", "log_odds"),
]


def format_log(logs: dict, step: int, max_steps: int) -> str | None:
    """'step 25/150 train loss 0.512 acc 0.969 ...' or None for lines without metrics."""
    split, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
    parts = [f"{title} {logs[prefix + key]:.4g}" for key, title in _COLUMNS if prefix + key in logs]
    if not parts:
        return None
    if split == "train" and "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    return f"step {step:>5}/{max_steps} {split:<5} " + "  ".join(parts)


class ConsoleProgressCallback(ProgressCallback):
    """The usual progress bar, with compact metric lines instead of raw dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = format_log(logs, state.global_step, state.max_steps)
        if line is None:
            return
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


def format_table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] not in (None, "")) and any(row[i] not in (None, "") for row in rows)
               for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] and n else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(parts).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value).rstrip("%"))
        return True
    except ValueError:
        return False
