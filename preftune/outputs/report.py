"""What a run leaves in its output folder besides the model: metrics, curves, model card.

At the end of training, `write_run_report` writes, next to the saved model:

- ``metrics.jsonl``: `Trainer.state.log_history`, one JSON object per line (train logs,
  evaluations and the final summary, in order; NaN/inf written as ``null``).
- ``training_curves.png``: loss, rewards (chosen vs rejected), margins, accuracies and,
  for ORPO, the odds-ratio and NLL terms against the step; train solid, eval dashed.
- ``README.md``: a Hugging Face model card (`preftune.outputs.card`) (YAML front matter, how to load the model,
  data, the settings that matter, final metrics, the curves, the paper to cite).

Everything here is a plain function of the log history and the config dict, so it
can be tested without training. Files are written atomically (a temporary file, then
``os.replace``), and matplotlib is driven through ``Figure`` + ``FigureCanvasAgg``,
so no display is needed and pyplot's global state is left alone.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS_FILE", "CURVES_FILE", "CARD_FILE",
    "split_history", "final_metrics", "write_metric_history",
    "panels_for", "plot_metrics",
    "write_run_report",
]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
CARD_FILE = "README.md"
CONFIG_FILE = "preftune_config.json"  # written by PreferenceTrainer.save_resolved_config

# Keys of the last log entry (Trainer's summary of the run), not a training step.
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
_POSITION_KEYS = ("step", "epoch")


# ------------------------------------------------------------------- history


def _number(value) -> float | None:
    """A finite float, or None (NaN, inf, strings, bools and missing values are not points)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _eval_prefix(entry: Mapping) -> str | None:
    """"eval_" (or "eval_NAME_" for one of several eval sets) when `entry` is an evaluation log.

    As `PreferenceTrainer.log` does: the prefix is what precedes "loss" in the eval loss
    key; the shortest such key is the loss itself (eval_nll_loss also ends in "loss").
    """
    losses = [k for k in entry if k.startswith("eval") and k.endswith("loss")]
    if losses:
        return min(losses, key=len)[: -len("loss")]
    return "eval_" if any(k.startswith("eval_") for k in entry) else None


def _is_summary(entry: Mapping) -> bool:
    return any(k in entry for k in _SUMMARY_KEYS)


def split_history(log_history: Iterable[Mapping]) -> tuple[list[dict], list[dict]]:
    """(train_rows, eval_rows) of a `Trainer.state.log_history`.

    Train rows are the per-logging-step entries as logged (the final summary entry with
    train_runtime / train_loss is in neither list). Eval rows have the eval prefix
    stripped, so both use the same names (``loss``, ``rewards/margins``, ...); an eval
    row of one of several named eval sets (``eval_NAME_loss``) has ``eval_set: NAME``.
    """
    train, evals = [], []
    for entry in log_history:
        prefix = _eval_prefix(entry)
        if prefix is not None:
            row = {k[len(prefix):]: v for k, v in entry.items() if k.startswith(prefix)}
            row.update({k: entry[k] for k in _POSITION_KEYS if k in entry})
            name = prefix[len("eval_"):-1] if len(prefix) > len("eval_") else None
            if name:
                row["eval_set"] = name
            evals.append(row)
        elif not _is_summary(entry):
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
    summary = next((e for e in reversed(history) if _is_summary(e)), None)
    if summary is not None and "train_loss" in summary:
        out.setdefault("train", {})["train_loss"] = summary["train_loss"]
    for row in evals:
        name = row.get("eval_set")
        out["eval" if not name else f"eval ({name})"] = {k: v for k, v in row.items() if k != "eval_set"}
    return out


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
    _atomic_write(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def _atomic_write(path: str, data: bytes | None = None, writer=None) -> None:
    """Write `data` (or call `writer(tmp_path)`) into a temporary file next to `path`, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data)
        if writer is not None:
            writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -------------------------------------------------------------------- curves

# name -> (title, y label, metrics drawn in the panel). Order = order on the figure.
_PANELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "loss": ("Loss", "loss", ("loss",)),
    "rewards": ("Rewards: chosen vs rejected", "reward", ("rewards/chosen", "rewards/rejected")),
    "rewards/margins": ("Reward margin (chosen − rejected)", "margin", ("rewards/margins",)),
    "rewards/accuracies": ("Reward accuracy (chosen > rejected)", "share of pairs", ("rewards/accuracies",)),
    "log_odds_ratio": ("ORPO odds-ratio term, log σ(log odds ratio)", "log σ(log odds)", ("log_odds_ratio",)),
    "nll_loss": ("NLL (SFT) term", "NLL", ("nll_loss",)),
}
_COLORS = {"loss": "tab:blue", "rewards/chosen": "tab:green", "rewards/rejected": "tab:red"}
_EVAL_STYLES = (("--", "o"), (":", "s"), ("-.", "^"))  # line style and marker of each eval set


def _series(rows: list[dict], metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        x, y = _number(row.get("step")), _number(row.get(metric))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _eval_groups(eval_rows: list[dict]) -> dict[str | None, list[dict]]:
    groups: dict[str | None, list[dict]] = {}
    for row in eval_rows:
        groups.setdefault(row.get("eval_set"), []).append(row)
    return groups


def panels_for(log_history: Iterable[Mapping]) -> list[str]:
    """Names of the panels `plot_metrics` draws for this history, in order (empty: nothing to plot).

    A panel is drawn when at least one of its metrics has a finite value at a known step,
    in the train or the eval logs: ``loss``, ``rewards`` (chosen and rejected),
    ``rewards/margins``, ``rewards/accuracies``, and, for ORPO, ``log_odds_ratio``, ``nll_loss``.
    """
    train, evals = split_history(log_history)
    return [name for name, (_, _, metrics) in _PANELS.items()
            if any(_series(rows, m)[0] for rows in (train, evals) for m in metrics)]


def plot_metrics(log_history: Iterable[Mapping], path: str, title: str | None = None) -> str | None:
    """Draw the training curves into a PNG at `path`; returns `path`, or None (nothing written)
    when the history holds nothing to plot.

    One panel per name of `panels_for`, x = step; train logs are solid lines, each eval
    set a dashed line with markers; non-finite values are skipped. Uses the Agg canvas
    directly, so no display is needed and pyplot's state is untouched.
    """
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import MaxNLocator

    history = list(log_history)
    names = panels_for(history)
    if not names:
        return None
    train, evals = split_history(history)
    groups = _eval_groups(evals)

    ncols = 1 if len(names) == 1 else 2 if len(names) <= 4 else 3
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes, all_steps = [], set()
    for i, name in enumerate(names):
        panel_title, ylabel, metrics = _PANELS[name]
        ax = fig.add_subplot(nrows, ncols, i + 1)
        axes.append(ax)
        n_points = 0
        for metric in metrics:
            color = _COLORS.get(metric, "tab:blue")
            what = f" {metric.split('/')[-1]}" if len(metrics) > 1 else ""
            xs, ys = _series(train, metric)
            all_steps.update(xs)
            n_points += len(xs)
            if xs:
                # markers where points are few enough to see, and always for a lone point
                ax.plot(xs, ys, "-", color=color, marker="o" if len(xs) <= 30 else None, markersize=3,
                        linewidth=1.5, label=f"train{what}")
            for j, (set_name, rows) in enumerate(groups.items()):
                xs, ys = _series(rows, metric)
                all_steps.update(xs)
                n_points += len(xs)
                if xs:
                    label = "eval" if set_name is None else f"eval ({set_name})"
                    style, marker = _EVAL_STYLES[j % len(_EVAL_STYLES)]
                    eval_color = color if len(groups) == 1 or len(metrics) > 1 else f"C{j + 1}"
                    ax.plot(xs, ys, style, color=eval_color, marker=marker, markersize=4, markerfacecolor="white",
                            linewidth=1.3, label=f"{label}{what}")
        if name == "rewards/accuracies":
            ax.set_ylim(-0.03, 1.03)
        if name in ("rewards", "rewards/margins", "log_odds_ratio"):
            ax.axhline(0.0, color="0.75", linewidth=0.8, zorder=0)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best" if n_points <= 2000 else "upper right")  # "best" is slow on long runs
    # one step range for every panel, so the panels line up even where a metric was logged less often
    lo, hi = min(all_steps), max(all_steps)
    for ax in axes:
        if lo == hi:  # one step: centre it with one tick, rather than zoom into ±0.1 of a step
            ax.set_xlim(lo - 1, hi + 1)
            ax.set_xticks([lo])
        else:
            pad = 0.04 * (hi - lo)
            ax.set_xlim(lo - pad, hi + pad)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    if title:
        fig.suptitle(title, fontsize=12)

    _atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    return path


# -------------------------------------------------------------------- report


def write_run_report(
    output_dir: str,
    log_history: Iterable[Mapping],
    *,
    trainer_name: str,
    base_model: str | None,
    datasets=None,
    config_dict: Mapping | None = None,
    adapter: bool = False,
    tags: Iterable[str] | None = None,
    lora=None,
    data_summaries: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write metrics.jsonl, training_curves.png and README.md into `output_dir`.

    Returns ``{"metrics": path, "curves": path, "model_card": path}``; "curves" is absent
    when there is nothing to plot. A failure in one file is logged as a warning and
    leaves the others (and the trained model) alone: the run is over, and its report
    must not lose it. Call it on the main process only.
    """
    history = [dict(e) for e in log_history]
    written: dict[str, str] = {}
    steps = (
        ("metrics", lambda: write_metric_history(history, os.path.join(output_dir, METRICS_FILE))),
        ("curves", lambda: plot_metrics(history, os.path.join(output_dir, CURVES_FILE),
                                        title=_curves_title(trainer_name, base_model, config_dict or {}))),
        ("model_card", lambda: _card_writer()(
            output_dir, trainer_name=trainer_name, base_model=base_model, datasets=datasets,
            config_dict=config_dict, final_metrics=final_metrics(history), adapter=adapter, tags=tags,
            lora=lora, data_summaries=data_summaries)),
    )
    os.makedirs(output_dir, exist_ok=True)
    stale = os.path.join(output_dir, CURVES_FILE)
    for key, write in steps:
        try:
            path = write()
        except Exception:  # noqa: BLE001 - the model is trained; say what failed and go on
            logger.warning("preftune: could not write the run's %s", key.replace("_", " "), exc_info=True)
            continue
        if path:
            written[key] = path
        elif key == "curves" and os.path.isfile(stale):
            os.remove(stale)  # a PNG of an earlier run in the same folder would be embedded as this run's
    return written


def _card_writer():
    from preftune.outputs.card import write_model_card  # model_card imports this module's helpers

    return write_model_card


def _curves_title(trainer_name: str, base_model: str | None, config: Mapping) -> str:
    from preftune.outputs.card import _method

    method = _method(trainer_name, config).upper()
    base = os.path.basename(str(base_model).rstrip("/")) if base_model else None
    return f"{method} on {base}" if base else method
