"""`generate_during_eval`: at each evaluation, answer a few fixed eval prompts and log the answers.

The same prompts (the first `generation_num_prompts` distinct ones of the eval set)
are answered greedily at every evaluation, so the answers can be read side by side
as training goes on; for DPO the reference model answers them too. Each evaluation
appends one JSON line per prompt to OUTPUT_DIR/eval_generations.jsonl and sends a
table to the active trackers (TensorBoard text, a wandb Table).
"""
from __future__ import annotations

import json
import os

from preftune.apps.generate import GenerationSettings, generate_answer

GENERATIONS_FILE = "eval_generations.jsonl"


def pick_prompts(eval_dataset, n: int) -> list[list[int]]:
    """The first n distinct prompts (token ids) of a prepared eval set."""
    picked, seen = [], set()
    for row in eval_dataset:
        key = tuple(row["prompt_ids"])
        if key not in seen:
            seen.add(key)
            picked.append(list(row["prompt_ids"]))
        if len(picked) == n:
            break
    return picked


def generate_from_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """One greedy answer per prompt (token ids, chat template already applied), special tokens removed:
    `preftune.apps.generate.generate_answer`, the path chat, ui and the demo use (the whole decoder
    output for an encoder-decoder model, what follows the prompt for a decoder-only one). The model is
    unwrapped first: a DeepSpeed / DDP engine (a reference model) generates through its module."""
    from preftune.logps import unwrap

    model = unwrap(model)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return [generate_answer(model, tokenizer, ids, settings) for ids in prompts]


def append_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def send_to_trackers(callbacks, rows: list[dict], step: int) -> None:
    """A table of the answers for TensorBoard (text) and wandb (Table), where those trackers are active."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "step"]
    for callback in callbacks:
        name = type(callback).__name__
        if name == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
            callback.tb_writer.add_text("eval/generations", "\n".join(lines), step)
            callback.tb_writer.flush()
        elif name == "WandbCallback" and getattr(callback, "_wandb", None) is not None and callback._wandb.run:
            table = callback._wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
            callback._wandb.log({"eval/generations": table}, commit=False)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def generation_rows(step: int, tokenizer, prompts, policy_answers, reference_answers=None) -> list[dict]:
    rows = []
    for i, (ids, answer) in enumerate(zip(prompts, policy_answers)):
        row = {"step": step, "prompt": tokenizer.decode(ids, skip_special_tokens=False), "policy": answer}
        if reference_answers is not None:
            row["reference"] = reference_answers[i]
        rows.append(row)
    return rows


def log_eval_generations(trainer) -> list[dict]:
    """Answer the fixed prompts with the policy (and the reference, for DPO) and log them."""
    from preftune.models import text_tokenizer

    args = trainer.args
    eval_dataset = trainer.eval_dataset
    if isinstance(eval_dataset, dict):
        eval_dataset = next(iter(eval_dataset.values()), None)
    if eval_dataset is None or not trainer.is_world_process_zero():
        return []
    tokenizer = text_tokenizer(trainer.processing_class)
    prompts = pick_prompts(eval_dataset, args.generation_num_prompts)
    policy = generate_from_ids(trainer.model, tokenizer, prompts, args.generation_max_new_tokens)
    reference = None
    if trainer.reference is not None:
        with trainer.reference.as_model(trainer.model) as ref_model:
            if ref_model is not None:
                reference = generate_from_ids(ref_model, tokenizer, prompts, args.generation_max_new_tokens)
    rows = generation_rows(trainer.state.global_step, tokenizer, prompts, policy, reference)
    os.makedirs(args.output_dir, exist_ok=True)
    append_jsonl(os.path.join(args.output_dir, GENERATIONS_FILE), rows)
    send_to_trackers(trainer.callback_handler.callbacks, rows, trainer.state.global_step)
    return rows
