"""What a run leaves in its output folder besides the model: metrics, curves, model card.

At the end of training, `write_run_report` writes, next to the saved model:

- ``metrics.jsonl``: `Trainer.state.log_history`, one JSON object per line (train logs,
  evaluations and the final summary, in order; NaN/inf written as ``null``); `preftune.outputs.history`.
- ``training_curves.png``: loss, rewards (chosen vs rejected), margins, accuracies and,
  for ORPO, the odds-ratio and NLL terms against the step; train solid, eval dashed;
  `preftune.outputs.curves`.
- ``README.md``: a Hugging Face model card (`preftune.outputs.card`) (YAML front matter, how to load the model,
  data, the settings that matter, final metrics, the curves, the paper to cite).

Everything here is a plain function of the log history and the config dict, so it
can be tested without training. Files are written atomically (`preftune.files`).
The names below are those modules', gathered here for callers of the whole report.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from preftune.outputs.card import CARD_FILE, CONFIG_FILE, method_name, write_model_card
from preftune.outputs.curves import CURVES_FILE, panels_for, plot_metrics
from preftune.outputs.history import METRICS_FILE, final_metrics, split_history, write_metric_history

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS_FILE", "CURVES_FILE", "CARD_FILE", "CONFIG_FILE",
    "split_history", "final_metrics", "write_metric_history",
    "panels_for", "plot_metrics",
    "write_run_report",
]


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
    model_kind: str | None = None,
) -> dict[str, str]:
    """Write metrics.jsonl, training_curves.png and README.md into `output_dir`.

    Returns ``{"metrics": path, "curves": path, "model_card": path}``; "curves" is absent
    when there is nothing to plot. A failure in one file is logged as a warning and
    leaves the others (and the trained model) alone: the run is over, and its report
    must not lose it. Call it on the main process only. `model_kind` ("causal", the
    default, "seq2seq" or "vision") is the card's, for its loading instructions.
    """
    history = [dict(e) for e in log_history]
    written: dict[str, str] = {}
    steps = (
        ("metrics", lambda: write_metric_history(history, os.path.join(output_dir, METRICS_FILE))),
        ("curves", lambda: plot_metrics(history, os.path.join(output_dir, CURVES_FILE),
                                        title=_curves_title(trainer_name, base_model, config_dict or {}))),
        ("model_card", lambda: write_model_card(
            output_dir, trainer_name=trainer_name, base_model=base_model, datasets=datasets,
            config_dict=config_dict, final_metrics=final_metrics(history), adapter=adapter, tags=tags,
            lora=lora, data_summaries=data_summaries, model_kind=model_kind)),
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


def _curves_title(trainer_name: str, base_model: str | None, config: Mapping) -> str:
    method = method_name(trainer_name, config).upper()
    base = os.path.basename(str(base_model).rstrip("/")) if base_model else None
    return f"{method} on {base}" if base else method
