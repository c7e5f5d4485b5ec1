"""`PreferenceTrainer`: a thin `transformers.Trainer` for preference pairs.

`compute_loss` reads top to bottom: batch -> policy log-probs -> reference log-probs
-> objective (loss + metrics). Everything that depends on flags — the objective, the
reference provider, the data pipeline — is resolved once in `__init__`.

`ORPOTrainer` and `DPOTrainer` keep TRL's constructor signatures so TRL scripts run
with only the import changed (`tokenizer=` is accepted as the old name of
`processing_class`).

Vision-language models (LLaVA): pass the processor as ``processing_class`` (as TRL);
rows keep their ``images`` column, prompts get the model's image tokens and are never
truncated (`preftune.data.prepare`), and batches carry ``pixel_values``
(`VisionPreferenceCollator`) to the policy and the reference alike.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict

import datasets
import torch
from transformers import Trainer

from preftune.train import checkpoints
from preftune.train.config import DPOConfig, ORPOConfig, PreferenceConfig
from preftune.data.collate import (REF_COLUMNS, EncoderDecoderCollator, PreferenceCollator, VisionPreferenceCollator,
                           batch_from_inputs)
from preftune.data.images import is_vision_processor
from preftune.data.prepare import LENGTH_SAMPLERS, prepare_dataset, with_pair_lengths
from preftune.errors import ConfigError
from preftune.outputs.generations import log_eval_generations
from preftune.train.guard import NonFiniteGuard
from preftune.logps.causal import LogpsOptions
from preftune.logps.seq2seq import is_encoder_decoder_model, is_vision_model, preference_batch_logps
from preftune.models import (apply_peft, disable_dropout, ensure_pad_token, is_peft_model, load_model, load_processor,
                     load_tokenizer, text_tokenizer)
from preftune.train.objectives import objective_from_config
from preftune.train.parallel import prepare_reference_model
from preftune.train.precompute import attach_reference_logps, reference_fingerprint
from preftune.train.reference import ModelReference, PrecomputedReference, reference_for
from preftune.train.sync import SyncReferenceCallback

logger = logging.getLogger(__name__)

REF_WEIGHTS = "reference_model.safetensors"  # TR-DPO: the synced reference, saved with each checkpoint
_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", *REF_COLUMNS, "images"]


class PreferenceTrainer(Trainer):
    config_class = PreferenceConfig
    default_output_dir = "preftune-output"

    def __init__(
        self,
        model=None,
        ref_model=None,
        args: PreferenceConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        peft_config=None,
        compute_metrics=None,
        tokenizer=None,
        optimizer_cls_and_kwargs=None,
    ):
        args = args if args is not None else self.config_class(output_dir=self.default_output_dir)
        if not isinstance(args, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}.")
        processing_class = _one_of(processing_class, tokenizer)
        if model is None and model_init is None:
            raise ConfigError("pass a model (a PreTrainedModel, a hub id or a local path).")
        if isinstance(model, str):
            name = model
            model = load_model(name, args.model_init_kwargs)
            remote_code = bool((args.model_init_kwargs or {}).get("trust_remote_code"))
            load = load_processor if is_vision_model(model) else load_tokenizer
            processing_class = processing_class or load(name, trust_remote_code=remote_code)
        if isinstance(ref_model, str):
            ref_model = load_model(ref_model, getattr(args, "ref_model_init_kwargs", None))
        if processing_class is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", None)
            if not name:
                raise ConfigError("pass processing_class (the tokenizer): it cannot be found from the model.")
            processing_class = load_processor(name) if is_vision_model(model) else load_tokenizer(name)
        tok = text_tokenizer(processing_class)
        ensure_pad_token(tok)
        vision = is_vision_processor(processing_class)
        if model is not None and is_vision_model(model) and not vision:
            _check_no_images(train_dataset, eval_dataset)
        data_tok = processing_class if vision else tok  # a VLM's processor expands the prompts' image tokens
        args.is_encoder_decoder = _resolve_encoder_decoder(model, args.is_encoder_decoder)

        if peft_config is not None:
            model = apply_peft(model, peft_config, gradient_checkpointing=args.gradient_checkpointing)
        if args.disable_dropout and model is not None:
            disable_dropout(model)
            if ref_model is not None:
                disable_dropout(ref_model)
        precompute = getattr(args, "precompute_ref_log_probs", False)
        self.reference = reference_for(args, model, ref_model, is_peft=is_peft_model(model), copy_policy=not precompute)
        self.objective = objective_from_config(args)
        self.logps_options = LogpsOptions.from_args(args)  # the policy's; providers hold the reference's

        self.data_reports = {}
        train_dataset = self._prepare(train_dataset, data_tok, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare(v, data_tok, args, f"eval/{k}") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare(eval_dataset, data_tok, args, "eval")
        pad_id = args.padding_value if args.padding_value is not None else tok.pad_token_id
        if data_collator is None and vision:
            data_collator = VisionPreferenceCollator(pad_token_id=pad_id, image_processor=processing_class.image_processor)
        collator_cls = EncoderDecoderCollator if args.is_encoder_decoder else PreferenceCollator
        data_collator = data_collator or collator_cls(pad_token_id=pad_id)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # Our loss is a mean over pairs: let Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._stored_metrics = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        if isinstance(self.reference, ModelReference) and self.reference.model is not self.model:
            self.reference.model = prepare_reference_model(self.accelerator, self.reference.model)
        if precompute:
            self._precompute_reference()
        self.base_model_name = _base_model_name(self.model)
        self.dataset_names = None  # named in the model card; the command line sets it
        self.nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        if getattr(args, "sync_ref_model", False):
            self.add_callback(SyncReferenceCallback(self.reference.model, self.model, args.ref_model_mixup_alpha,
                                                    args.ref_model_sync_steps))

    def _precompute_reference(self) -> None:
        """One pass of the reference over the data, then no reference model in memory."""
        provider, args = self.reference, self.args
        common = dict(
            batch_size=args.precompute_ref_batch_size or args.per_device_eval_batch_size, device=args.device,
            cache_dir=args.ref_logps_cache_dir, weights_key=reference_fingerprint(provider, self.model),
        )

        def attach(dataset, split):
            return attach_reference_logps(dataset, provider, self.model, self.data_collator, split=split, **common)

        self.train_dataset = attach(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: attach(v, f"eval/{k}") for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = attach(self.eval_dataset, "eval")
        self.reference = PrecomputedReference()  # the reference model (if any) is no longer referenced

    # ------------------------------------------------------------------ data

    def _prepare(self, dataset, tokenizer, args, split):
        """Rows of any supported shape -> token ids (already prepared data passes through)."""
        if dataset is None or _is_prepared(dataset):
            return dataset
        prepared, report = prepare_split(dataset, tokenizer, args, split)
        self.data_reports[split] = report
        return prepared

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """As Trainer.evaluate; a raw `eval_dataset` given here is prepared first (a name is one of the named
        eval sets, prepared when the trainer was built: Trainer evaluates a dict of them by name)."""
        if eval_dataset is not None and not isinstance(eval_dataset, (dict, str)):
            pc = self.processing_class
            eval_dataset = self._prepare(eval_dataset, pc if is_vision_processor(pc) else text_tokenizer(pc), self.args, "eval")
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.args.generate_during_eval:
            log_eval_generations(self)
        return metrics

    def _set_signature_columns_if_needed(self):
        self._signature_columns = list(_COLUMNS)

    def _get_train_sampler(self, train_dataset=None):
        return super()._get_train_sampler(self._for_sampler(train_dataset or self.train_dataset))

    def _get_eval_sampler(self, eval_dataset):
        return super()._get_eval_sampler(self._for_sampler(eval_dataset))

    def _for_sampler(self, dataset):
        """Length-aware samplers get each pair's length (they would look for an input_ids column)."""
        if self.args.train_sampling_strategy in LENGTH_SAMPLERS and isinstance(dataset, datasets.Dataset):
            return with_pair_lengths(dataset, self.args.length_column_name)
        return dataset

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = batch_from_inputs(inputs)  # PreferenceBatch, or Seq2SeqBatch for encoder-decoder models
        n_rows = 2 * batch.batch_size
        weights = self.objective.token_weights(batch.completion_mask)  # LD-DPO (policy only, as TRL), else None
        policy = preference_batch_logps(
            model, batch, options=self.logps_options,
            sequence_rows=self.objective.sequence_rows(n_rows, batch.completion_mask.device),
            completion_weights=weights, wpo=self.objective.use_weighting,
        )
        ref = self.reference.logps(model, batch) if self.reference is not None else None
        out = self.objective(policy, ref)
        loss = out.loss
        metrics = dict(out.metrics)
        if policy.aux_loss is not None:
            loss = loss + self._router_aux_loss_coef(model) * policy.aux_loss
            metrics["aux_loss"] = policy.aux_loss.detach().reshape(1)
        if model.training:
            self.nonfinite_guard.note_loss(loss)
        self._store_metrics(metrics, "train" if model.training else "eval")
        return (loss, metrics) if return_outputs else loss

    def _router_aux_loss_coef(self, model) -> float:
        from preftune.logps.causal import unwrap

        return float(getattr(unwrap(model).config, "router_aux_loss_coef", 0.001))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([metrics["rewards/chosen"], metrics["rewards/rejected"]], dim=1)  # (B, 2)
        labels = torch.zeros(logits.shape[0], device=logits.device)
        return loss, logits, labels

    # --------------------------------------------------------------- metrics

    def _store_metrics(self, metrics: dict, split: str) -> None:
        """Keep sums and counts, so a logged value is the exact mean over all pairs since the last log."""
        for name, values in metrics.items():
            values = self.accelerator.gather_for_metrics(values.detach().float().reshape(-1))
            total = self._stored_metrics[split][name]
            total[0] += values.sum().item()
            total[1] += values.numel()

    def log(self, logs: dict, start_time=None) -> None:
        from preftune.outputs.history import eval_prefix

        prefix = eval_prefix(logs)
        split, prefix = ("train", "") if prefix is None else ("eval", prefix)
        for name, (total, count) in self._stored_metrics[split].items():
            logs[prefix + name] = total / max(count, 1)
        self._stored_metrics[split].clear()
        if split == "train" and "loss" in logs and self.nonfinite_guard.skipped:
            logs["skipped_steps"] = self.nonfinite_guard.skipped
        super().log(logs, start_time)

    # ------------------------------------------------------------------ run

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """As Trainer.train; `resume_from_checkpoint=True` (or "true") takes the newest *complete* checkpoint."""
        say = print if self.is_world_process_zero() else (lambda *_: None)
        with self.args.main_process_first(desc="resolving the checkpoint to resume from"):  # one process renames
            resume = checkpoints.resolve_resume(resume_from_checkpoint, self.args.output_dir, say=say)
            if resume is None and self.args.should_save:  # a fresh run must not rotate or resume an older run's
                checkpoints.set_aside_previous(self.args.output_dir, say=say)
        if resume is not None:
            self._load_extra_state(resume)
        self.save_resolved_config()
        output = super().train(resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        self.write_report(self.args.output_dir)
        return output

    # ---------------------------------------------------------------- report

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As Trainer.save_model; a final save (not a checkpoint) also gets the run report (card, metrics, curves).

        A failed write (a full disk) raises `checkpoints.SaveError`, naming the last complete checkpoint.
        """
        folder = output_dir or self.args.output_dir
        with checkpoints.writing(folder, self.args.output_dir):
            super().save_model(output_dir, _internal_call=_internal_call)
            if not _internal_call:
                self.write_report(folder)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """As Trainer._save, but the pickled training_args.bin it writes (a file meant to be shared with the
        model) carries no hub token and no absolute path of this machine."""
        with self._shareable_args():
            super()._save(output_dir, state_dict=state_dict)

    @contextlib.contextmanager
    def _shareable_args(self):
        from preftune.outputs.redact import shareable_config

        fields = ("hub_token", "model_init_kwargs", "ref_model_init_kwargs", "output_dir", "logging_dir",
                  "ref_logps_cache_dir")
        kept = {name: getattr(self.args, name) for name in fields if hasattr(self.args, name)}
        for name, value in kept.items():
            setattr(self.args, name, None if name == "hub_token" else shareable_config(value))
        try:
            yield
        finally:
            for name, value in kept.items():
                setattr(self.args, name, value)

    def create_model_card(self, model_name=None, **kwargs):
        """Called by push_to_hub before the upload: preftune's card instead of Trainer's."""
        self.write_report(self.args.output_dir)

    def write_report(self, folder: str) -> dict:
        """metrics.jsonl, training_curves.png and the model card README.md into `folder` (main process only)."""
        if not self.is_world_process_zero():
            return {}
        from preftune.outputs.loading import model_kind
        from preftune.outputs.report import write_run_report

        adapter = is_peft_model(self.model)
        return write_run_report(
            folder, self.state.log_history, trainer_name=type(self).__name__, base_model=self.base_model_name,
            datasets=self.dataset_names, config_dict={"trainer": type(self).__name__, **self.args.to_dict()},
            adapter=adapter, lora=self.model if adapter else None,
            data_summaries={k: r.summary() for k, r in self.data_reports.items()}, model_kind=model_kind(self.model),
        )

    # ----------------------------------------------------------- checkpoints

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, plus preftune's own state, marked complete last; rotation only after that."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save:  # a folder written again is not complete until it is marked again
            checkpoints.unmark(folder)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer would rotate before our marker exists
        try:
            with checkpoints.writing(folder, run_dir):  # a full disk: say which checkpoint is complete
                super()._save_checkpoint(model, trial)
                if self.args.should_save:
                    self._save_extra_state(folder)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process's RNG state is written
        if self.args.should_save:
            with checkpoints.writing(folder, run_dir):
                checkpoints.mark_complete(folder, self.state.global_step)
            checkpoints.rotate(run_dir, limit, keep=self.state.best_model_checkpoint)

    def _save_extra_state(self, folder: str) -> None:
        """What Trainer does not know about: BCO's running reward mean, a TR-DPO reference's weights."""
        state = {"nonfinite_skipped": self.nonfinite_guard.skipped}
        bco = getattr(self.objective, "bco", None)
        if bco is not None:
            state["bco_running_mean"] = {"mean": bco.mean, "count": bco.count}
        checkpoints.save_extra_state(folder, state)
        if getattr(self.args, "sync_ref_model", False) and isinstance(self.reference, ModelReference):
            from safetensors.torch import save_model

            save_model(self.accelerator.unwrap_model(self.reference.model), os.path.join(folder, REF_WEIGHTS))

    def _load_extra_state(self, folder: str) -> None:
        state = checkpoints.load_extra_state(folder)
        self.nonfinite_guard.skipped = state.get("nonfinite_skipped", 0)
        bco = getattr(self.objective, "bco", None)
        if bco is not None and "bco_running_mean" in state:
            bco.mean, bco.count = state["bco_running_mean"]["mean"], state["bco_running_mean"]["count"]
        ref_path = os.path.join(folder, REF_WEIGHTS)
        if getattr(self.args, "sync_ref_model", False) and isinstance(self.reference, ModelReference):
            if not os.path.isfile(ref_path):
                raise ConfigError(f"{folder} has no {REF_WEIGHTS}: it was not saved by a TR-DPO run, so the synced "
                                  "reference cannot be restored; resume without --sync_ref_model or from another run.")
            from safetensors.torch import load_model

            load_model(self.accelerator.unwrap_model(self.reference.model), ref_path)

    def save_resolved_config(self) -> None:
        """Write the full, resolved config next to the checkpoints (tokens redacted, absolute paths by their last name)."""
        if not self.is_world_process_zero():
            return
        from preftune.outputs.card import CONFIG_FILE
        from preftune.outputs.files import atomic_write
        from preftune.outputs.redact import shareable_config

        config = shareable_config({"trainer": type(self).__name__, **self.args.to_dict()})
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        atomic_write(os.path.join(self.args.output_dir, CONFIG_FILE), text.encode("utf-8"))


def _base_model_name(model) -> str | None:
    """The hub id or path the policy was loaded from (the base, for an adapter)."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        name = next(iter(peft_config.values())).base_model_name_or_path
        if name:
            return name
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def prepare_split(dataset, tokenizer, args: PreferenceConfig, split: str):
    """Rows -> token ids with `args`' length limits and bad-row policy: (prepared dataset, PrepareReport).

    The command line calls this before loading the model's weights, so that every
    data problem is found first; the trainer calls it for raw datasets it is given.
    """
    with args.main_process_first(desc=f"preparing {split} data"):
        prepared, report = prepare_dataset(
            dataset, tokenizer if is_vision_processor(tokenizer) else text_tokenizer(tokenizer), args.length_limits(),
            skip_bad_rows=args.skip_bad_rows,
            num_proc=args.dataset_num_proc, desc=f"tokenizing {split} pairs",
            is_encoder_decoder=bool(args.is_encoder_decoder),
        )
    level = logging.WARNING if (report.n_dropped_empty_after_truncation or report.n_bad_rows) else logging.INFO
    logger.log(level, "%s data: %s", split, report.summary())
    return prepared, report


def _resolve_encoder_decoder(model, flag: bool | None) -> bool:
    """args.is_encoder_decoder, or the model's config when unset (False for model_init without the flag)."""
    if model is None:
        return bool(flag)
    detected = is_encoder_decoder_model(model)
    if flag is not None and bool(flag) != detected:
        raise ConfigError(f"is_encoder_decoder={flag} but the model's config says is_encoder_decoder={detected}; "
                          "leave is_encoder_decoder unset (it is read from the model).")
    return detected


def _check_no_images(*datasets) -> None:
    """A vision-language model given a plain tokenizer would silently train without the images."""
    for dataset in datasets:
        for ds in (dataset.values() if isinstance(dataset, dict) else [dataset]):
            if "images" in (getattr(ds, "column_names", None) or []):
                raise ConfigError("the model is a vision-language model and the data has images, but processing_class "
                                  "is a tokenizer; pass the model's processor (AutoProcessor.from_pretrained(...)).")


def _is_prepared(dataset) -> bool:
    names = getattr(dataset, "column_names", None)
    return names is not None and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(names)


def _one_of(processing_class, tokenizer):
    if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
        raise ConfigError("pass the tokenizer once: processing_class and tokenizer are two names for the same argument.")
    return processing_class if processing_class is not None else tokenizer


class ORPOTrainer(PreferenceTrainer):
    """ORPO: Hong, Lee & Thorne 2024. No reference model."""

    config_class = ORPOConfig
    default_output_dir = "orpo-output"

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, model_init=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, peft_config=None, compute_metrics=None, tokenizer=None):
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
            callbacks=callbacks, optimizers=optimizers, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            peft_config=peft_config, compute_metrics=compute_metrics, tokenizer=tokenizer,
        )


class DPOTrainer(PreferenceTrainer):
    """DPO: Rafailov et al. 2023, and the DPO family selected by `loss_type`."""

    config_class = DPOConfig
    default_output_dir = "dpo-output"

    def __init__(self, model=None, ref_model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None, tokenizer=None, model_init=None):
        super().__init__(
            model=model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics, peft_config=peft_config,
            compute_metrics=compute_metrics, tokenizer=tokenizer,
        )
