"""The model card (README.md) a run leaves in its output folder, and redaction of secrets.

`model_card` is a plain function of the resolved config, the final metrics and what was
trained (full model or adapter), so it is tested without training; `write_model_card`
writes it atomically next to the model. Keys holding tokens never reach the card.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from preftune.outputs.report import (
    _POSITION_KEYS, CARD_FILE, CONFIG_FILE, CURVES_FILE, METRICS_FILE, _atomic_write, _number, split_history,
)

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


def local_name(name):
    """A model, data set or folder as a file meant to be shared names it: hub ids as they are, a local
    path by its last component (`/home/me/models/tiny-llama` -> `tiny-llama`), so that no path of the
    training machine is published."""
    if not isinstance(name, str) or not name or _is_hub_id(name):
        return name
    return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name


def shareable_config(config: Any) -> Any:
    """`redact_config`, and every absolute path (output_dir, cache folders, ...) by its last component."""
    config = redact_config(config)
    if isinstance(config, Mapping):
        return {k: shareable_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [shareable_config(v) for v in config]
    if isinstance(config, str) and os.path.isabs(os.path.expanduser(config)) and len(config) > 1:
        return local_name(config)
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
    base = _model_ref(local_name(base_model)) if base_model else "a causal language model"
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
    config = shareable_config(dict(config_dict or {}))
    method = _method(trainer_name, config)
    lora_settings = _lora_settings(lora)
    names = [shareable_config(d) for d in _as_list(datasets)]  # an absolute path by its last name
    local_dir = config.get("output_dir") or "OUTPUT_DIR"
    model_id = local_name(model_id) or config.get("hub_model_id") or local_dir
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
    _atomic_write(path, text.encode("utf-8"))
    return path
