"""What a run leaves in its output folder besides the model: metrics, curves, model card.

At the end of training, `write_run_report` writes, next to the saved model:

- ``metrics.jsonl``: `Trainer.state.log_history`, one JSON object per line (train logs,
  evaluations and the final summary, in order; NaN/inf written as ``null``).
- ``training_curves.png``: loss, rewards (chosen vs rejected), margins, accuracies and,
  for ORPO, the odds-ratio and NLL terms against the step; train solid, eval dashed.
- ``README.md``: a Hugging Face model card (YAML front matter, how to load the model,
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
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS_FILE", "CURVES_FILE", "CARD_FILE",
    "split_history", "final_metrics", "write_metric_history",
    "panels_for", "plot_metrics",
    "redact_config", "card_tags", "model_card", "write_model_card",
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


# ---------------------------------------------------------------- model card

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv", ".yaml", ".yml")


def _is_hub_id(name) -> bool:
    """`owner/name` that is not a local path or a data file (what the hub's front matter accepts)."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or ".." in name:
        return False
    if name.lower().endswith(_FILE_SUFFIXES):
        return False
    return not os.path.exists(name)


def redact_config(config: Any) -> Any:
    """A copy of `config` without secrets: every key containing "token" whose value is a
    string (hub_token, token, ...) is dropped, at any depth (model_init_kwargs, ...)."""
    if isinstance(config, Mapping):
        return {k: redact_config(v) for k, v in config.items()
                if not ("token" in str(k).lower() and isinstance(v, str))}
    if isinstance(config, (list, tuple)):
        return [redact_config(v) for v in config]
    return config


def _method(trainer_name: str, config: Mapping) -> str:
    name = (trainer_name or "").lower()
    if "orpo" in name:
        return "orpo"
    if "dpo" in name:
        return "dpo"
    if "loss_type" in config:
        return "dpo"
    if "nll_completion_only" in config:
        return "orpo"
    return name or "preference"


def _loss_types(config: Mapping) -> list[str]:
    value = config.get("loss_type") or ["sigmoid"]
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _lora_settings(lora) -> dict:
    """LoRA settings from a peft config object, an adapter_config.json dict or a PeftModel."""
    if lora is None:
        return {}
    configs = getattr(lora, "peft_config", None)
    if isinstance(configs, Mapping) and configs:  # a PeftModel
        lora = configs.get(getattr(lora, "active_adapter", None)) or next(iter(configs.values()))
    if not isinstance(lora, Mapping):
        lora = {k: getattr(lora, k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora")
                if hasattr(lora, k)}
    out = {k: lora[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora") if k in lora}
    targets = out.get("target_modules")
    if isinstance(targets, (list, tuple, set, frozenset)):
        # "all-linear" is saved expanded, sometimes to full paths: name each kind of module once
        out["target_modules"] = sorted({str(t).rsplit(".", 1)[-1] for t in targets})
    return out


def card_tags(trainer_name: str, config_dict: Mapping | None = None, *, adapter: bool = False,
              tags: Iterable[str] | None = None) -> list[str]:
    """The model card's tags: preftune, the method (orpo / dpo), DPO variant losses, lora, then `tags`.

    peft's `save_pretrained` rewrites README.md's tags from the base model's `model_tags`;
    `model.add_model_tags(card_tags(...))` on the trained model keeps these through it.
    """
    config = config_dict or {}
    method = _method(trainer_name, config)
    out = ["preftune", method]
    if method == "dpo":
        out += [t for t in _loss_types(config) if t != "sigmoid"]
    if adapter:
        out.append("lora")
    out += [str(t) for t in (tags or [])]
    return list(dict.fromkeys(out))


def _fmt(value) -> str:
    """A metric value for a table: 4 decimals, scientific notation for tiny values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"


def _fmt_setting(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _precision(config: Mapping) -> str | None:
    parts = []
    if config.get("bf16"):
        parts.append("bf16 mixed precision")
    elif config.get("fp16"):
        parts.append("fp16 mixed precision")
    elif "bf16" in config or "fp16" in config:
        parts.append("fp32")
    quant = (config.get("model_init_kwargs") or {}).get("quantization_config") if isinstance(config.get("model_init_kwargs"), Mapping) else None
    if isinstance(quant, Mapping):
        if quant.get("load_in_4bit"):
            parts.append(f"base weights in 4 bits ({quant.get('bnb_4bit_quant_type', 'nf4')}, bitsandbytes)")
        elif quant.get("load_in_8bit"):
            parts.append("base weights in 8 bits (bitsandbytes)")
    return ", ".join(parts) or None


def _settings_rows(method: str, config: Mapping, adapter: bool, lora: Mapping) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(label, key, keep=lambda v: v is not None):
        if key in config and keep(config[key]):
            rows.append((label, _fmt_setting(config[key])))

    add("learning rate", "learning_rate")
    add("scheduler", "lr_scheduler_type")
    add("warmup steps", "warmup_steps", lambda v: v not in (None, 0))
    max_steps = config.get("max_steps")
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        rows.append(("max steps", _fmt_setting(max_steps)))
    else:
        add("epochs", "num_train_epochs")
    add("batch size per device", "per_device_train_batch_size")
    add("gradient accumulation steps", "gradient_accumulation_steps")
    add("λ (beta): weight of the odds-ratio term" if method == "orpo" else "β (beta)", "beta")
    if method == "dpo":
        rows.append(("loss type", ", ".join(_loss_types(config))))
        add("loss weights", "loss_weights")
        add("label smoothing", "label_smoothing", lambda v: bool(v))
        add("RPO α (NLL weight)", "rpo_alpha")
        add("reference-free", "reference_free", bool)
        add("reference log-probs precomputed", "precompute_ref_log_probs", bool)
        add("TR-DPO reference sync", "sync_ref_model", bool)
    if method == "orpo":
        add("NLL on the completion only", "nll_completion_only", bool)
    add("max length (tokens)", "max_length")
    add("max prompt length (tokens)", "max_prompt_length")
    add("max completion length (tokens)", "max_completion_length")
    if adapter:
        for label, key in (("LoRA r", "r"), ("LoRA alpha", "lora_alpha"), ("LoRA dropout", "lora_dropout"),
                           ("LoRA target modules", "target_modules")):
            if lora.get(key) is not None:
                rows.append((label, _fmt_setting(lora[key])))
        for label, key in (("DoRA", "use_dora"), ("rank-stabilised LoRA", "use_rslora")):
            if lora.get(key):
                rows.append((label, "yes"))
    precision = _precision(config)
    if precision:
        rows.append(("precision", precision))
    add("gradient checkpointing", "gradient_checkpointing", bool)
    add("seed", "seed")
    return rows


# Metrics of the final table, in order (names as logged, without the eval_ prefix).
_CARD_METRICS = (
    "loss", "train_loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
    "nll_loss", "log_odds_ratio", "log_odds_chosen", "logps/chosen", "logps/rejected", "aux_loss",
)
_METRIC_NOTES = {
    "loss": "loss (last logging window for train)",
    "train_loss": "mean train loss over the run",
}


def _metric_columns(final: Mapping | None) -> dict[str, dict]:
    """`final_metrics()`'s shape, or a flat Trainer-style dict (eval_ prefixed keys = eval)."""
    if not final:
        return {}
    if all(isinstance(v, Mapping) for v in final.values()):
        return {str(k): dict(v) for k, v in final.items() if v}
    columns: dict[str, dict] = {}
    train = {k: v for k, v in final.items() if not k.startswith("eval_")}
    if set(train) - set(_POSITION_KEYS):
        columns["train"] = train
    evals = {k: v for k, v in final.items() if k.startswith("eval_")}
    if evals:
        row = split_history([{**evals, **{k: final[k] for k in _POSITION_KEYS if k in final}}])[1][0]
        name = row.pop("eval_set", None)
        columns["eval" if not name else f"eval ({name})"] = row
    return columns


_CITATIONS = {
    "orpo": ("ORPO", "Hong, Lee & Thorne, 2024", "2403.07691", """@article{hong2024orpo,
  title         = {{ORPO}: Monolithic Preference Optimization without Reference Model},
  author        = {Hong, Jiwoo and Lee, Noah and Thorne, James},
  journal       = {arXiv preprint arXiv:2403.07691},
  year          = {2024},
  eprint        = {2403.07691},
  archivePrefix = {arXiv}
}"""),
    "dpo": ("DPO", "Rafailov et al., 2023", "2305.18290", """@inproceedings{rafailov2023direct,
  title         = {Direct Preference Optimization: Your Language Model is Secretly a Reward Model},
  author        = {Rafailov, Rafael and Sharma, Archit and Mitchell, Eric and Manning, Christopher D. and Ermon, Stefano and Finn, Chelsea},
  booktitle     = {Advances in Neural Information Processing Systems},
  year          = {2023},
  eprint        = {2305.18290},
  archivePrefix = {arXiv}
}"""),
}


def _as_list(datasets) -> list[str]:
    if datasets is None:
        return []
    if isinstance(datasets, str):
        return [datasets]
    return [str(d) for d in datasets if d is not None]


def _model_ref(name: str) -> str:
    return f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{name}`"


def _what_it_is(method: str, base_model: str | None, config: Mapping, adapter: bool) -> str:
    base = _model_ref(base_model) if base_model else "a causal language model"
    if method == "orpo":
        how = ("[ORPO](https://arxiv.org/abs/2403.07691) (odds-ratio preference optimization): the loss is the "
               "negative log-likelihood of the chosen answer plus λ times an odds-ratio term that favours the chosen "
               "answer over the rejected one; no reference model")
        if config.get("nll_completion_only"):
            how += "; the NLL term covers the chosen completion only"
    elif method == "dpo":
        losses = _loss_types(config)
        name = "the standard sigmoid DPO loss" if losses == ["sigmoid"] else f"the DPO-family loss {' + '.join(losses)}"
        ref = ("no reference model (reference-free)" if config.get("reference_free")
               else "the adapter-disabled base model as the frozen reference" if adapter
               else "a frozen copy of the starting model as the reference")
        how = f"[DPO](https://arxiv.org/abs/2305.18290) (direct preference optimization), with {name} and {ref}"
    else:
        how = f"{method} preference optimization"
    kind = "A LoRA adapter (peft) for" if adapter else "A fine-tuned version of"
    text = f"{kind} {base}, trained on preference pairs (a prompt, a chosen and a rejected answer) with {how}."
    text += " Trained with preftune."
    if adapter:
        text += " Only the adapter weights are here; the base model is loaded from its own repository or folder."
    return text


def _usage(model_id: str, adapter: bool, local_dir: str) -> str:
    """Loading snippet for `model_id`; the preftune commands take a local folder (`local_dir`)."""
    q = json.dumps(model_id)
    chat = """messages = [{"role": "user", "content": "Hello! What can you do?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))"""
    if adapter:
        load = f"""from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained({q})  # the base model with this adapter on top
tokenizer = AutoTokenizer.from_pretrained({q})
"""
        extra = (f"\n\nTo fold the adapter into the base weights: `model = model.merge_and_unload()` in Python, or "
                 f"`preftune merge --adapter {local_dir} --output MERGED_DIR`.")
    else:
        load = f"""from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained({q})
tokenizer = AutoTokenizer.from_pretrained({q})
"""
        extra = ""
    download = f"hf download {model_id} --local-dir {local_dir}\n" if local_dir != model_id else ""
    return (f"```python\n{load}\n{chat}\n```{extra}\n\nOr talk to it in the terminal:\n\n"
            f"```bash\n{download}preftune chat {local_dir}\n```")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(
    *,
    trainer_name: str,
    base_model: str | None,
    datasets=None,
    config_dict: Mapping | None = None,
    final_metrics: Mapping | None = None,
    adapter: bool = False,
    tags: Iterable[str] | None = None,
    model_id: str | None = None,
    curves: str | None = None,
    lora=None,
    data_summaries: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> str:
    """The text of a Hugging Face model card (README.md) for a preftune run.

    `config_dict` is the resolved config (``args.to_dict()``); keys containing "token"
    with a string value are dropped before anything is read from it. `final_metrics`
    is `final_metrics(log_history)` (or a flat Trainer-style dict: eval_ keys = eval).
    `model_id` is the name the usage snippet loads (default: hub_model_id, else
    output_dir); `curves` a relative path of the curves PNG to embed; `lora` the LoRA
    settings (a peft config, adapter_config.json dict or PeftModel); `data_summaries`
    split -> one-line data report; `config_file` the relative path of the full config.
    Nothing in the card depends on the time or machine of the run.
    """
    config = redact_config(dict(config_dict or {}))
    method = _method(trainer_name, config)
    lora_settings = _lora_settings(lora)
    names = _as_list(datasets)
    local_dir = config.get("output_dir") or "OUTPUT_DIR"
    model_id = model_id or config.get("hub_model_id") or local_dir
    if not _is_hub_id(model_id):
        local_dir = model_id

    front: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if base_model and _is_hub_id(base_model):
        front["base_model"] = base_model
    front["tags"] = card_tags(trainer_name, config, adapter=adapter, tags=tags)
    hub_datasets = [d for d in names if _is_hub_id(d)]
    if hub_datasets:
        front["datasets"] = hub_datasets
    front["pipeline_tag"] = "text-generation"

    import yaml

    label, who, arxiv, bibtex = _CITATIONS.get(method, (None, None, None, None))
    title = os.path.basename(str(model_id).rstrip("/")) or "Model"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {title}",
        _what_it_is(method, base_model, config, adapter),
        "## How to use",
        _usage(model_id, adapter, local_dir),
        "## Training data",
    ]
    if names:
        parts.append("\n".join(
            f"- [{d}](https://huggingface.co/datasets/{d})" if _is_hub_id(d) else f"- `{d}`" for d in names))
    else:
        parts.append("Not recorded (the data was passed to the trainer as an in-memory data set).")
    if data_summaries:
        parts.append("As prepared for training:\n\n" + "\n".join(f"- {split}: {summary}" for split, summary in data_summaries.items()))

    parts.append("## Training settings")
    rows = _settings_rows(method, config, adapter, lora_settings)
    if rows:
        parts.append(_table(["setting", "value"], [list(r) for r in rows]))
    if config_file:
        parts.append(f"The full resolved configuration is in [`{config_file}`]({config_file}).")

    columns = _metric_columns(final_metrics)
    metric_rows = []
    for metric in _CARD_METRICS:
        values = [columns[c].get(metric) for c in columns]
        if any(v is not None for v in values):
            metric_rows.append([_METRIC_NOTES.get(metric, metric)] + ["" if v is None else _fmt(v) for v in values])
    if metric_rows:
        parts.append("## Results")
        at: dict[str, list[str]] = {}  # "step 75, epoch 1" -> columns logged there
        for col, values in columns.items():
            step, epoch = _number(values.get("step")), _number(values.get("epoch"))
            if step is not None:
                place = f"step {int(step)}" + (f", epoch {epoch:.3g}" if epoch is not None else "")
                at.setdefault(place, []).append(col)
        intro = "Last logged values"
        intro += (" (" + "; ".join(f"{' and '.join(cols)}: {place}" for place, cols in at.items()) + ").") if at else "."
        reward = {"dpo": "β times the log-ratio of policy to reference probability of an answer",
                  "orpo": "β times the mean per-token log-probability of an answer"}.get(method)
        if reward:
            intro += (f" A reward is {reward}; the margin is chosen minus rejected, and the accuracy the share "
                      "of pairs whose chosen answer gets the higher reward.")
        parts.append(intro)
        parts.append(_table(["metric", *columns], metric_rows))
    if curves:
        parts.append("## Training curves")
        parts.append(f"![Training curves: loss, rewards, margins and accuracy against the step]({curves})")
        parts.append(f"Train logs are solid lines, evaluations dashed. Every logged value is in [`{METRICS_FILE}`]({METRICS_FILE}).")
    elif metric_rows:
        parts.append(f"Every logged value is in [`{METRICS_FILE}`]({METRICS_FILE}).")

    if bibtex:
        parts.append("## Citation")
        parts.append(f"This model was trained with {label} ({who}, [arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})):")
        parts.append(f"```bibtex\n{bibtex}\n```")
    return "\n\n".join(parts) + "\n"


def write_model_card(
    output_dir: str,
    *,
    trainer_name: str,
    base_model: str | None,
    datasets=None,
    config_dict: Mapping | None = None,
    final_metrics: Mapping | None = None,
    adapter: bool = False,
    tags: Iterable[str] | None = None,
    lora=None,
    data_summaries: Mapping[str, str] | None = None,
) -> str:
    """Write `model_card(...)` to OUTPUT_DIR/README.md (atomically); returns its path.

    The curves PNG and preftune_config.json are linked when they are in `output_dir`;
    LoRA settings come from `lora`, else from OUTPUT_DIR/adapter_config.json if saved.
    """
    if lora is None and adapter:
        path = os.path.join(output_dir, "adapter_config.json")
        if os.path.isfile(path):
            with open(path) as f:
                lora = json.load(f)
    text = model_card(
        trainer_name=trainer_name, base_model=base_model, datasets=datasets, config_dict=config_dict,
        final_metrics=final_metrics, adapter=adapter, tags=tags, lora=lora, data_summaries=data_summaries,
        curves=CURVES_FILE if os.path.isfile(os.path.join(output_dir, CURVES_FILE)) else None,
        config_file=CONFIG_FILE if os.path.isfile(os.path.join(output_dir, CONFIG_FILE)) else None,
    )
    path = os.path.join(output_dir, CARD_FILE)
    _atomic_write(path, text.encode("utf-8"))
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
        ("model_card", lambda: write_model_card(
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


def _curves_title(trainer_name: str, base_model: str | None, config: Mapping) -> str:
    method = _method(trainer_name, config).upper()
    base = os.path.basename(str(base_model).rstrip("/")) if base_model else None
    return f"{method} on {base}" if base else method
