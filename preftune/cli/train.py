"""`preftune orpo|dpo ...`: flags to a `Run`, then training (the other commands are in `preftune.cli`).

Every ORPOConfig / DPOConfig / TrainingArguments field is a flag, and ``--config
run.yaml`` holds the same keys (flags given on the command line win); ms-swift's and
TRL's flag names are accepted as aliases. The flags, the aliases and the YAML
handling are in `preftune.cli.args`; `preftune.cli.run` resolves them into a `Run`
(config, model, LoRA and quantization settings); this module trains it. With no model
and no data set, the run trains the bundled tiny model on the bundled preference
set with demo settings (printed first); any flag given still wins.
``NPROC_PER_NODE=N`` re-runs the command under torchrun (`preftune.cli.launch`).

LoRA flags given while LoRA is off are unused, and a note says so. 4- and 8-bit
loading needs LoRA, bitsandbytes and a CUDA GPU; a run that lacks one says which,
before any model is downloaded.
"""
from __future__ import annotations

import os

from preftune.cli.run import Run, parse_run
from preftune.errors import ConfigError
from preftune.outputs.redact import redact_argv as _shown_argv  # the command line as shown and saved


# ------------------------------------------------------------------------- train

# Training commands -> "module:TrainerClass" (imported when the command runs).
TRAINERS = {"orpo": "preftune.train.orpo:ORPOTrainer", "dpo": "preftune.train.dpo:DPOTrainer",
            "cpo": "preftune.train.cpo:CPOTrainer", "simpo": "preftune.train.cpo:CPOTrainer",
            "kto": "preftune.train.kto:KTOTrainer"}


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def train(command: str, argv: list[str]) -> int:
    from transformers.trainer_callback import ProgressCallback

    from preftune.cli.console import ConsoleProgressCallback
    from preftune.cli.args import named_eval_sets
    from preftune.data.sources import load_sources, parse_columns, train_and_eval
    from preftune.errors import DataError
    from preftune.apps.generate import generate_answers
    from preftune.models import check_model_config, ensure_pad_token, load_model, load_processor, load_tokenizer, text_tokenizer
    import importlib
    from preftune.train.inputs import holds_lists, prepare_list_split, prepare_split
    from preftune.train.checkpoints import SaveError

    run = parse_run(command, argv)
    script, config = run.script, run.config
    check_output_dir(config, rank=int(os.environ.get("RANK", "0")))
    merge_to = script.merge_output or config.output_dir.rstrip("/\\") + "-merged"
    if script.merge and os.path.isdir(merge_to) and os.listdir(merge_to) and not config.overwrite_output_dir:
        raise ConfigError(f"--merge would write into {merge_to!r}, which already holds files; pass --merge_output "
                          "with another folder, or --overwrite_output_dir.")
    remote_code = bool(run.model_kwargs.get("trust_remote_code"))
    model_config = check_model_config(run.model, trust_remote_code=remote_code)  # a missing or broken model fails before any data is read
    # T5/BART: the data is tokenized for an encoder and a decoder (the trainer checks the flag against the model)
    is_encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
    if run.demo:
        _say(f"preftune {command}: no --model/--dataset given, so this is the demo: the bundled tiny model on the "
             f"bundled tiny-prefs set (lr={config.learning_rate}, epochs={config.num_train_epochs}, beta={config.beta}). "
             f"Output: {config.output_dir}")
    for note in run.notes:
        _say(f"preftune: note: {note}")
    seed = config.data_seed if config.data_seed is not None else config.seed
    named = named_eval_sets(script.eval_dataset)  # --eval_dataset NAME=SPEC ...: several evaluation sets
    if named and script.split_dataset_ratio:
        raise ConfigError("pass either --eval_dataset or --split_dataset_ratio, not both.")
    with config.main_process_first(desc="loading data"):  # one process downloads, the others read the cache
        kw = dict(config=script.dataset_config, columns=parse_columns(script.columns), seed=seed,
                  skip_bad_rows=config.skip_bad_rows,
                  check_rows=command != "kto")  # KTO's rows may be unpaired: preftune.data.unpaired checks them
        if named:
            train_data = load_sources(script.dataset or ["tiny-prefs"], script.dataset_split, **kw)
            evals = {name: load_sources(specs, script.eval_split, **kw) for name, specs in named.items()}
        else:
            train_data, eval_data = train_and_eval(
                script.dataset or ["tiny-prefs"], eval_dataset=script.eval_dataset, split=script.dataset_split,
                eval_split=script.eval_split, split_ratio=script.split_dataset_ratio, **kw)
            evals = {None: eval_data} if eval_data is not None else {}
    notes = dict.fromkeys(n for data in (train_data, *evals.values()) for n in data.notes)
    for note in notes:
        _say(f"preftune: note: {note}")
    for name, data in (("train", train_data), *((_split_name(k), v) for k, v in evals.items())):
        summary = data.skipped_summary()
        if summary and not (name != "train" and data.parts is train_data.parts):  # a held-out fraction shares the counts
            _say(f"preftune: {name} data: {summary}")
    if not evals and config.eval_strategy != "no":
        config = run.config_without_evaluation()  # nothing to evaluate on; say so rather than fail at the first eval
        _say("preftune: no evaluation data found, so evaluation is off (pass --eval_split, --eval_dataset or --split_dataset_ratio).")
    # Tokenizer and every row checked before the model's weights load (minutes for a large model).
    if getattr(model_config, "vision_config", None) is not None:  # a VLM: its processor tokenizes (and expands images)
        tokenizer = load_processor(run.model, trust_remote_code=remote_code)
    else:
        tokenizer = load_tokenizer(run.model, trust_remote_code=remote_code)
    ensure_pad_token(text_tokenizer(tokenizer))
    prepared = {}
    # List rows (several scored answers per prompt) in any split, or a listwise loss: every split as lists
    lists = command != "kto" and (bool(getattr(config, "listwise_loss", None))
                                  or any(d.is_lists for d in (train_data, *evals.values())))
    for key, loaded in (("train", train_data), *evals.items()):
        split = key if key == "train" else _split_name(key)
        try:  # the rows were checked when loaded: their pairs are tokenized as they are
            if command == "kto":  # unpaired rows (or pairs, split): preftune.data.unpaired
                if holds_lists(loaded.dataset):
                    raise ConfigError("the data holds list rows (one prompt, several scored answers), which KTO does "
                                      "not train on; use preftune dpo, orpo, cpo or simpo for list rows.")
                prepared[key] = _prepare_unpaired(loaded.dataset, tokenizer, config, split)
                _say(f"preftune: {split} data: {prepared[key].report.summary()}")
                continue
            if lists:
                prepared[key] = prepare_list_split(loaded.dataset, tokenizer, config, split, lists=loaded.pairs)
            else:
                prepared[key] = prepare_split(loaded.dataset, tokenizer, config, split,
                                              is_encoder_decoder=is_encoder_decoder, pairs=loaded.pairs)
        except DataError as err:
            raise DataError(loaded.relabel(str(err))) from None
        _say(f"preftune: {split} data: {prepared[key].report.summary()}")
    eval_prepared = {k: v for k, v in prepared.items() if k != "train"}
    eval_arg = eval_prepared if named else eval_prepared.get(None)
    model = load_model(run.model, run.model_kwargs)
    module, name = TRAINERS[command].split(":")
    trainer_cls = getattr(importlib.import_module(module), name)
    trainer = trainer_cls(model=model, args=config, train_dataset=prepared["train"], eval_dataset=eval_arg,
                          processing_class=tokenizer, peft_config=run.peft_config,
                          dataset_names=script.dataset or (["tiny-prefs (bundled)"] if run.demo else None))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgressCallback)
    demo_eval = evals[None].dataset if run.demo and None in evals else None
    samples, before = _demo_samples(trainer.model, tokenizer, demo_eval) if run.demo else ([], [])
    _save_command(run, argv)
    _say(f"preftune: {_world(config)}")
    _say(f"preftune: {trainer.logps_path.description}")  # which log-prob path this model takes, and why
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        trainer.save_model(config.output_dir)
    except KeyboardInterrupt:
        raise _interrupted(config.output_dir, resume_command(command, argv, config.output_dir)) from None
    except SaveError as err:
        raise _save_failed(err, resume_command(command, argv, config.output_dir)) from None
    for prompt, old, new in zip(samples, before, generate_answers(trainer.model, tokenizer, samples)):
        _say(f"\nprompt: {prompt[-1]['content']}\n  before: {old}\n  after:  {new}")
    if evals and config.eval_strategy != "no":
        _say_held_out(trainer, list(evals))
    _say(f"preftune: model saved to {config.output_dir}")
    if script.merge and int(os.environ.get("RANK", "0")) == 0:
        from preftune.apps.merge import merge_adapter

        merged = merge_adapter(config.output_dir, merge_to, overwrite=config.overwrite_output_dir)
        _say(f"preftune: merged model saved to {merged}")
    return 0


def _prepare_unpaired(dataset, tokenizer, config, split: str):
    from preftune.train.inputs import PreparedData
    from preftune.train.kto import prepare_unpaired_split

    return PreparedData(*prepare_unpaired_split(dataset, tokenizer, config, split))


def _split_name(key: str | None) -> str:
    """The evaluation set `key` (None: the only one) as the trainer's data reports name it."""
    return "eval" if key is None else f"eval/{key}"


def _say_held_out(trainer, names: list) -> None:
    """One line per evaluation set: its last metrics (evaluated now unless the last step was evaluated)."""
    last = {}
    for entry in trainer.state.log_history:
        for name in names:
            if (f"eval_{name}_loss" if name else "eval_loss") in entry:
                last[name] = entry
    if any(last.get(n, {}).get("step") != trainer.state.global_step for n in names):
        metrics = trainer.evaluate()
        last = {name: metrics for name in names}
    stats = ["loss", "rewards/accuracies", "rewards/ranking_accuracy", "rewards/margins", "rewards/chosen",
             "rewards/rejected"]
    for name in names:
        prefix = f"eval_{name}_" if name else "eval_"
        values = ", ".join(f"{k}={last[name][prefix + k]:.4f}" for k in stats if prefix + k in last[name])
        _say(f"preftune: held-out{f' ({name})' if name else ''} {values}")


def check_output_dir(config, rank: int = 0) -> None:
    """Refuse, before anything loads, an output folder that cannot be written, or one holding a
    previous run's files (unless resuming or --overwrite_output_dir)."""
    if rank != 0:  # the other processes would see rank 0's first files
        return
    path = config.output_dir
    resuming = str(config.resume_from_checkpoint or "").strip().lower() not in ("", "false", "no", "0", "none")
    if os.path.isdir(path) and os.listdir(path) and not (resuming or config.overwrite_output_dir):
        raise ConfigError(f"output folder {path!r} already holds files (a previous run?); pass --overwrite_output_dir "
                          "to train into it anyway, --resume_from_checkpoint true to continue that run, or another --output_dir.")
    try:
        os.makedirs(path, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to output folder {path!r}: {err.strerror or err}.") from None
    from preftune.train.checkpoints import check_resume

    check_resume(config.resume_from_checkpoint, path)  # nothing to resume from: say so before anything loads


def _world(config) -> str:
    """One line: how many processes train, so a launcher that silently started one is visible."""
    n = config.world_size
    if n == 1:
        return f"training in 1 process on {config.device.type} (world size 1; NPROC_PER_NODE=N runs N)"
    return f"training in {n} data-parallel processes on {config.device.type} (world size {n})"


class Stopped(Exception):
    """A training run that stopped early (Ctrl-C, a full disk): `line` says what happened and how to go on."""

    def __init__(self, line: str, exit_code: int):
        super().__init__(line)
        self.exit_code = exit_code


def _interrupted(output_dir: str, resume: str) -> Stopped:
    from preftune.train.checkpoints import last_complete

    last = last_complete(output_dir)[0]
    if last is None:
        return Stopped("preftune: interrupted before any checkpoint was complete, so there is nothing to resume from "
                       "(--save_steps sets how often one is written).", 130)
    return Stopped(f"preftune: interrupted; the last complete checkpoint is {last}; resume with: {resume}", 130)


def _save_failed(err, resume: str) -> Stopped:
    """A SaveError (a full disk, ...) with what to do next."""
    then = f"resume with: {resume}" if err.last_complete else "run the command again"
    return Stopped(f"preftune: error: {err}; free space (or lower --save_total_limit), then {then}", 2)


def resume_command(command: str, argv: list[str], output_dir: str) -> str:
    """The command line that continues this run from its newest complete checkpoint."""
    import shlex

    words = _shown_argv(argv)
    if not any(w == "--output_dir" or w.startswith("--output_dir=") for w in words):
        words += ["--output_dir", output_dir]
    if not any(w == "--resume_from_checkpoint" or w.startswith("--resume_from_checkpoint=") for w in words):
        words += ["--resume_from_checkpoint", "true"]
    return shlex.join(["preftune", command, *words])


def _save_command(run: Run, argv: list[str]) -> None:
    """OUTPUT_DIR/preftune_command.json: the command line and what it resolved to (next to preftune_config.json)."""
    import dataclasses
    import json

    if int(os.environ.get("RANK", "0")) != 0:
        return
    os.makedirs(run.config.output_dir, exist_ok=True)
    record = {"command": run.command, "argv": _shown_argv(argv), "model": run.model, "script": dataclasses.asdict(run.script)}
    with open(os.path.join(run.config.output_dir, "preftune_command.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)


def _demo_samples(model, tokenizer, eval_ds, n: int = 3, pool: int = 12):
    """n held-out prompts the untrained model answers in the rejected (curt) style, and those answers."""
    from preftune.assets import is_chosen_style
    from preftune.apps.generate import generate_answers

    if eval_ds is None:
        return [], []
    prompts = [eval_ds[i]["prompt"] for i in range(min(pool, len(eval_ds)))]
    answers = generate_answers(model, tokenizer, prompts)
    picked = [i for i, a in enumerate(answers) if not is_chosen_style(a)][:n] or list(range(min(n, len(prompts))))
    return [prompts[i] for i in picked], [answers[i] for i in picked]
