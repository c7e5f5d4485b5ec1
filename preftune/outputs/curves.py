"""The training curves PNG: loss, rewards (chosen vs rejected), margins, accuracies and, for ORPO,
the odds-ratio and NLL terms against the step; train solid, each eval set dashed.

matplotlib is driven through ``Figure`` + ``FigureCanvasAgg``, so no display is needed and
pyplot's global state is left alone; the file is written atomically.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from preftune.files import atomic_write
from preftune.outputs.history import finite_number, split_history

CURVES_FILE = "training_curves.png"

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
        x, y = finite_number(row.get("step")), finite_number(row.get(metric))
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

    return atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
