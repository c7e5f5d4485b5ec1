"""`preftune` command line: `preftune orpo ...`, `preftune dpo ...`.

Every ORPOConfig / DPOConfig field is a flag (HfArgumentParser). With no --model and
no --dataset, the run trains the bundled tiny model on the bundled preference set
with demo settings (printed first); any flag given still wins.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from .errors import UserError

DEMO_SETTINGS = dict(
    learning_rate=5e-4,
    num_train_epochs=3,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    eval_strategy="steps",
    eval_steps=25,
    logging_steps=25,
    save_strategy="no",
    warmup_steps=5,
    max_length=256,
    max_prompt_length=128,
)
DEMO_BETA = {"orpo": 0.5, "dpo": 0.5}


@dataclass
class ScriptArguments:
    """What to train and on what (everything else is in the training config)."""

    model: Optional[str] = field(
        default=None, metadata={"help": "Model hub id or local path. Default: the bundled tiny model (demo)."}
    )
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Preference data: hub id, local .json/.jsonl/.csv/.parquet file or folder; NAME#N keeps N rows. "
                  "Default: the bundled tiny-prefs set (demo)."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: Optional[str] = field(
        default=None, metadata={"help": "Split used for evaluation (default: 'test' when the data has one)."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated module names, or ALL for every linear layer (default: ALL)."}
    )


def _config_class(command: str):
    from .config import DPOConfig, ORPOConfig

    return {"orpo": ORPOConfig, "dpo": DPOConfig}[command]


def _parse(command: str, argv: list[str]):
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ScriptArguments, _config_class(command)), prog=f"preftune {command}")
    demo = not any(a.split("=")[0] in ("--model", "--dataset") for a in argv)
    if demo:
        parser.set_defaults(**DEMO_SETTINGS, beta=DEMO_BETA[command])
    if not any(a.split("=")[0] == "--output_dir" for a in argv):
        argv = [*argv, "--output_dir", os.path.join("outputs", f"{command}-{'tiny-llama' if demo else 'run'}")]
    script, config = parser.parse_args_into_dataclasses(args=argv)
    return script, config, demo


def _peft_config(script: ScriptArguments):
    if not script.use_peft:
        return None
    from peft import LoraConfig

    targets = script.lora_target_modules or "ALL"
    targets = "all-linear" if targets.upper() == "ALL" else [t.strip() for t in targets.split(",")]
    return LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def train(command: str, argv: list[str]) -> int:
    from transformers.trainer_callback import ProgressCallback

    from .assets import tiny_model_path
    from .console import ConsoleProgressCallback
    from .generation import generate_answers
    from .data.sources import has_split, load_preference_data
    from .models import load_model, load_tokenizer
    from .trainer import DPOTrainer, ORPOTrainer

    script, config, demo = _parse(command, argv)
    model_name = script.model or tiny_model_path()
    data_name = script.dataset or "tiny-prefs"
    if demo:
        print(f"preftune {command}: no --model/--dataset given, so this is the demo: the bundled tiny model on the "
              f"bundled tiny-prefs set (lr={config.learning_rate}, epochs={config.num_train_epochs}, beta={config.beta}). "
              f"Output: {config.output_dir}", flush=True)
    eval_split = script.eval_split or ("test" if has_split(data_name, "test") else None)
    train_ds = load_preference_data(data_name, script.dataset_split, seed=config.seed)
    eval_ds = load_preference_data(data_name, eval_split, seed=config.seed) if eval_split else None
    if eval_ds is None and config.eval_strategy != "no":
        config.eval_strategy = "no"  # nothing to evaluate on; say so rather than fail at the first eval
        print("preftune: no evaluation split found, so evaluation is off (pass --eval_split).", flush=True)
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, config.model_init_kwargs)
    trainer_cls = ORPOTrainer if command == "orpo" else DPOTrainer
    trainer = trainer_cls(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=_peft_config(script))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgressCallback)
    for split, report in trainer.data_reports.items():
        print(f"preftune: {split} data: {report.summary()}", flush=True)
    samples, before = _demo_samples(trainer.model, tokenizer, eval_ds) if demo else ([], [])
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    for prompt, old, new in zip(samples, before, generate_answers(trainer.model, tokenizer, samples)):
        print(f"\nprompt: {prompt[-1]['content']}\n  before: {old}\n  after:  {new}", flush=True)
    if eval_ds is not None:
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        metrics = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else trainer.evaluate()
        keys = ["eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected"]
        print("preftune: held-out " + ", ".join(f"{k[5:]}={metrics[k]:.4f}" for k in keys if k in metrics), flush=True)
    print(f"preftune: model saved to {config.output_dir}", flush=True)
    return 0


def _demo_samples(model, tokenizer, eval_ds, n: int = 3, pool: int = 12):
    """n held-out prompts the untrained model answers in the rejected (curt) style, and those answers."""
    from .assets import is_chosen_style
    from .generation import generate_answers

    if eval_ds is None:
        return [], []
    prompts = [eval_ds[i]["prompt"] for i in range(min(pool, len(eval_ds)))]
    answers = generate_answers(model, tokenizer, prompts)
    picked = [i for i, a in enumerate(answers) if not is_chosen_style(a)][:n] or list(range(min(n, len(prompts))))
    return [prompts[i] for i in picked], [answers[i] for i in picked]


USAGE = """usage: preftune COMMAND [flags]

commands:
  orpo   train with ORPO (no reference model)
  dpo    train with DPO (a frozen reference model)

`preftune orpo` with no flags runs the offline demo on the bundled tiny model.
`preftune COMMAND --help` lists every flag."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in ("orpo", "dpo"):
        print(f"preftune: error: unknown command {command!r}; choose orpo or dpo.", file=sys.stderr)
        return 2
    try:
        return train(command, rest)
    except UserError as err:
        print(f"preftune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preftune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
