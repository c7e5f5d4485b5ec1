"""The metric history of a run: `Trainer.state.log_history` read back as train rows, eval rows and
final values, and written as ``metrics.jsonl``.

`eval_prefix` is the one rule for telling an evaluation log from a training log (and which
of several named eval sets it belongs to); `PreferenceTrainer.log` uses it too.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

from preftune.files import atomic_write

METRICS_FILE = "metrics.jsonl"

# Keys of the last log entry (Trainer's summary of the run), not a training step.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
POSITION_KEYS = ("step", "epoch")


def finite_number(value) -> float | None:
    """A finite float, or None (NaN, inf, strings, bools and missing values are not points)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def eval_prefix(keys: Iterable[str]) -> str | None:
    """"eval_" (or "eval_NAME_" for one of several eval sets) when a log with these keys is an evaluation.

    The prefix is what precedes "loss" in the eval loss key; the shortest such key is the
    loss itself (eval_nll_loss also ends in "loss"). A log with eval_ keys but no loss is an
    evaluation of the single eval set; anything else (None) is a training log.
    """
    keys = list(keys)
    losses = [k for k in keys if k.startswith("eval") and k.endswith("loss")]
    if losses:
        return min(losses, key=len)[: -len("loss")]
    return "eval_" if any(k.startswith("eval_") for k in keys) else None


def is_summary(entry: Mapping) -> bool:
    return any(k in entry for k in SUMMARY_KEYS)


def split_history(log_history: Iterable[Mapping]) -> tuple[list[dict], list[dict]]:
    """(train_rows, eval_rows) of a `Trainer.state.log_history`.

    Train rows are the per-logging-step entries as logged (the final summary entry with
    train_runtime / train_loss is in neither list). Eval rows have the eval prefix
    stripped, so both use the same names (``loss``, ``rewards/margins``, ...); an eval
    row of one of several named eval sets (``eval_NAME_loss``) has ``eval_set: NAME``.
    """
    train, evals = [], []
    for entry in log_history:
        prefix = eval_prefix(entry)
        if prefix is not None:
            row = {k[len(prefix):]: v for k, v in entry.items() if k.startswith(prefix)}
            row.update({k: entry[k] for k in POSITION_KEYS if k in entry})
            name = prefix[len("eval_"):-1] if len(prefix) > len("eval_") else None
            if name:
                row["eval_set"] = name
            evals.append(row)
        elif not is_summary(entry):
            train.append(dict(entry))
    return train, evals


def final_metrics(log_history: Iterable[Mapping]) -> dict[str, dict]:
    """The last logged values of the run: ``{"train": {...}, "eval": {...}, "eval (NAME)": {...}}``.

    "train" is the last training log (means over its logging window) plus ``train_loss``
    from the summary (the mean over the whole run); each eval column is the last
    evaluation of that set. Columns with no values are left out.
    """
    history = list(log_history)
    train, evals = split_history(history)
    out: dict[str, dict] = {}
    if train:
        out["train"] = dict(train[-1])
    summary = next((e for e in reversed(history) if is_summary(e)), None)
    if summary is not None and "train_loss" in summary:
        out.setdefault("train", {})["train_loss"] = summary["train_loss"]
    for row in evals:
        name = row.get("eval_set")
        out["eval" if not name else f"eval ({name})"] = {k: v for k, v in row.items() if k != "eval_set"}
    return out


def metric_columns(final: Mapping | None) -> dict[str, dict]:
    """`final_metrics()`'s shape as it is, or a flat Trainer-style dict (eval_ prefixed keys = eval) in that shape."""
    if not final:
        return {}
    if all(isinstance(v, Mapping) for v in final.values()):
        return {str(k): dict(v) for k, v in final.items() if v}
    columns: dict[str, dict] = {}
    train = {k: v for k, v in final.items() if not k.startswith("eval_")}
    if set(train) - set(POSITION_KEYS):
        columns["train"] = train
    evals = {k: v for k, v in final.items() if k.startswith("eval_")}
    if evals:
        row = split_history([{**evals, **{k: final[k] for k in POSITION_KEYS if k in final}}])[1][0]
        name = row.pop("eval_set", None)
        columns["eval" if not name else f"eval ({name})"] = row
    return columns


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(obj):
    """json.dumps default: numpy / torch scalars to Python numbers, anything else to str."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return _json_value(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def write_metric_history(log_history: Iterable[Mapping], path: str) -> str:
    """Write the log history as JSONL, one object per entry, in order; returns `path`.

    Entries are written as logged (keys in their order); NaN and inf, which JSON does
    not have, are written as null. Read it back with
    ``[json.loads(line) for line in open(path)]`` or ``pandas.read_json(path, lines=True)``.
    """
    lines = []
    for entry in log_history:
        record = {str(k): _json_value(v) for k, v in entry.items()}
        lines.append(json.dumps(record, default=_jsonable, ensure_ascii=False, allow_nan=False))
    return atomic_write(path, "".join(line + "\n" for line in lines).encode("utf-8"))
