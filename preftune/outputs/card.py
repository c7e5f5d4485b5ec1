"""The model card (README.md) a run leaves in its output folder.

`model_card` is a plain function of the resolved config, the final metrics, what was
trained (full model or adapter) and the kind of model (`preftune.outputs.loading`), so it
is tested without training; `write_model_card` writes it atomically next to the model.
Everything it shows from the config goes through `preftune.outputs.redact` first.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from preftune.outputs.curves import CURVES_FILE
from preftune.files import atomic_write
from preftune.outputs.history import METRICS_FILE, finite_number, metric_columns
from preftune.outputs.loading import kind_named, usage
from preftune.outputs.redact import is_hub_id, local_name, shareable_config

CARD_FILE = "README.md"
CONFIG_FILE = "preftune_config.json"  # written by PreferenceTrainer.save_resolved_config


def method_name(trainer_name: str, config: Mapping) -> str:
    """"orpo", "dpo" (or the trainer's own name) for a run, from its trainer's name or its config."""
    name = (trainer_name or "").lower()
    if "orpo" in name:
        return "orpo"
    if "cpo" in name or "cpo_alpha" in config:  # CPO's loss_type is not DPO's
        return "cpo"
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
    method = method_name(trainer_name, config)
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
    return f"[{name}](https://huggingface.co/{name})" if is_hub_id(name) else f"`{name}`"


def _what_it_is(method: str, base_model: str | None, config: Mapping, adapter: bool, described: str) -> str:
    base = _model_ref(local_name(base_model)) if base_model else described
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
    elif method == "cpo":
        simpo = config.get("loss_type") == "simpo"
        how = ("[SimPO](https://arxiv.org/abs/2405.14734) (length-normalised reward with a target margin)" if simpo else
               f"[CPO](https://arxiv.org/abs/2401.08417) (contrastive preference optimization, loss {config.get('loss_type')})")
        how += f", NLL weight cpo_alpha={config.get('cpo_alpha')}; no reference model"
    else:
        how = f"{method} preference optimization"
    kind = "A LoRA adapter (peft) for" if adapter else "A fine-tuned version of"
    text = f"{kind} {base}, trained on preference pairs (a prompt, a chosen and a rejected answer) with {how}."
    text += " Trained with preftune."
    if adapter:
        text += " Only the adapter weights are here; the base model is loaded from its own repository or folder."
    return text


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
    model_kind: str | None = None,
) -> str:
    """The text of a Hugging Face model card (README.md) for a preftune run.

    `config_dict` is the resolved config (``args.to_dict()``); keys containing "token"
    with a string value are dropped before anything is read from it. `final_metrics`
    is `final_metrics(log_history)` (or a flat Trainer-style dict: eval_ keys = eval).
    `model_id` is the name the usage snippet loads (default: hub_model_id, else
    output_dir); `curves` a relative path of the curves PNG to embed; `lora` the LoRA
    settings (a peft config, adapter_config.json dict or PeftModel); `data_summaries`
    split -> one-line data report; `config_file` the relative path of the full config;
    `model_kind` "causal" (default), "seq2seq" or "vision" (`preftune.outputs.loading.model_kind`):
    the classes and pipeline tag of the loading instructions.
    Nothing in the card depends on the time or machine of the run.
    """
    kind = kind_named(model_kind)
    config = shareable_config(dict(config_dict or {}))
    method = method_name(trainer_name, config)
    lora_settings = _lora_settings(lora)
    names = [shareable_config(d) for d in _as_list(datasets)]  # an absolute path by its last name
    local_dir = config.get("output_dir") or "OUTPUT_DIR"
    model_id = local_name(model_id) or config.get("hub_model_id") or local_dir
    if not is_hub_id(model_id):
        local_dir = model_id

    front: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if base_model and is_hub_id(base_model):
        front["base_model"] = base_model
    front["tags"] = card_tags(trainer_name, config, adapter=adapter, tags=tags)
    hub_datasets = [d for d in names if is_hub_id(d)]
    if hub_datasets:
        front["datasets"] = hub_datasets
    front["pipeline_tag"] = kind.pipeline_tag

    import yaml

    label, who, arxiv, bibtex = _CITATIONS.get(method, (None, None, None, None))
    title = os.path.basename(str(model_id).rstrip("/")) or "Model"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {title}",
        _what_it_is(method, base_model, config, adapter, kind.described),
        "## How to use",
        usage(model_id, adapter, local_dir, kind.name),
        "## Training data",
    ]
    if names:
        parts.append("\n".join(
            f"- [{d}](https://huggingface.co/datasets/{d})" if is_hub_id(d) else f"- `{d}`" for d in names))
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

    columns = metric_columns(final_metrics)
    metric_rows = []
    for metric in _CARD_METRICS:
        values = [columns[c].get(metric) for c in columns]
        if any(v is not None for v in values):
            metric_rows.append([_METRIC_NOTES.get(metric, metric)] + ["" if v is None else _fmt(v) for v in values])
    if metric_rows:
        parts.append("## Results")
        at: dict[str, list[str]] = {}  # "step 75, epoch 1" -> columns logged there
        for col, values in columns.items():
            step, epoch = finite_number(values.get("step")), finite_number(values.get("epoch"))
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


def write_model_card(output_dir: str, *, lora=None, adapter: bool = False, **card) -> str:
    """Write `model_card(**card, ...)` to OUTPUT_DIR/README.md (atomically); returns its path.

    The curves PNG and preftune_config.json are linked when they are in `output_dir`;
    LoRA settings come from `lora`, else from OUTPUT_DIR/adapter_config.json if saved.
    """
    if lora is None and adapter:
        path = os.path.join(output_dir, "adapter_config.json")
        if os.path.isfile(path):
            with open(path) as f:
                lora = json.load(f)
    text = model_card(
        **card, adapter=adapter, lora=lora,
        curves=CURVES_FILE if os.path.isfile(os.path.join(output_dir, CURVES_FILE)) else None,
        config_file=CONFIG_FILE if os.path.isfile(os.path.join(output_dir, CONFIG_FILE)) else None,
    )
    path = os.path.join(output_dir, CARD_FILE)
    return atomic_write(path, text.encode("utf-8"))
