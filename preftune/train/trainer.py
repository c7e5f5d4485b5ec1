"""`PreferenceTrainer`: a thin `transformers.Trainer` for preference pairs.

`compute_loss` reads top to bottom: batch -> policy log-probs -> reference log-probs
-> objective (loss + metrics). Everything that depends on flags — the objective, the
reference provider, the log-prob path, the data pipeline — is resolved once in `__init__`.

Each family owns its wiring in its own module: `preftune.train.orpo.ORPOTrainer`,
`preftune.train.dpo.DPOTrainer` (reference provider, precomputed references, TR-DPO
sync, the state they add to checkpoints). They keep TRL's constructor signatures so TRL
scripts run with only the import changed (`tokenizer=` is accepted as the old name of
`processing_class`).

Data reaches the trainer raw (any supported row shape: prepared here) or as
`PreparedData` (token ids and the report of how they were made: what the command line
passes after checking every row before the model loads). The config is never changed.

Vision-language models (LLaVA): pass the processor as ``processing_class`` (as TRL);
rows keep their ``images`` column, prompts get the model's image tokens and are never
truncated (`preftune.data.prepare`), and batches carry ``pixel_values``
(`VisionPreferenceCollator`) to the policy and the reference alike.

List rows (one prompt, several scored answers: issue 17) are found when the trainer is built
(`inputs.wants_list_rows`: any split holds them, or the loss is listwise); then every split is
prepared as lists (pair rows as lists of two), batches are `ListBatch`es (`ListCollator`), each
prompt's answers are packed after it once (prefix sharing), and the family's objective is wrapped
in `list_objective.ListObjective`, which `compute_loss` binds to each batch (`for_batch`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections import defaultdict

import datasets
import torch
from transformers import Trainer

from preftune.train import checkpoints
from preftune.train.config import PreferenceConfig
from preftune.data.collate import (LIST_COLUMNS, LIST_REF_COLUMN, REF_COLUMNS, EncoderDecoderCollator, ListBatch,
                                   ListCollator,
                                   PreferenceCollator, VisionPreferenceCollator,
                           batch_from_inputs)
from preftune.data.images import is_vision_processor
from preftune.data.prepare import LENGTH_SAMPLERS, with_pair_lengths
from preftune.errors import ConfigError
from preftune.outputs.generations import log_eval_generations
from preftune.train.guard import NonFiniteGuard
from preftune.train.offload import ActivationOffloading
from preftune.logps import LogpsOptions, choose_logps_path, is_vision_model, unwrap
from preftune.models import (apply_peft, disable_dropout, ensure_pad_token, is_peft_model, load_model, load_processor,
                     load_tokenizer, set_pad_token, text_tokenizer)
from preftune.train.inputs import (PreparedData, base_model_name, check_list_rows, check_no_images, check_streams, is_stream,
                                   is_tokenized, prepare_list_split, wants_list_rows, with_list_lengths,
                                   one_processing_class, prepare_split, prepare_stream_split, resolve_encoder_decoder)
from preftune.train.list_objective import ListObjective
from preftune.train.metrics import StoredMetrics
from preftune.train.objectives import objective_from_config

logger = logging.getLogger(__name__)

_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", *REF_COLUMNS, "images"]


class PreferenceTrainer(StoredMetrics, Trainer):
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
        *,
        dataset_names=None,
    ):
        args = args if args is not None else self.config_class(output_dir=self.default_output_dir)
        if not isinstance(args, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}.")
        if train_dataset is None:  # as TRL
            raise ConfigError("train_dataset is required: pass the training pairs (a datasets.Dataset, a "
                              "datasets.IterableDataset or a list of rows).")
        processing_class = one_processing_class(processing_class, tokenizer)
        if model is None and model_init is None:
            raise ConfigError("pass a model (a PreTrainedModel, a hub id or a local path).")
        if isinstance(model, str):
            name = model
            model = load_model(name, self._load_kwargs(args.model_init_kwargs, args))
            load = load_processor if is_vision_model(model) else load_tokenizer
            processing_class = processing_class or load(name, trust_remote_code=self._remote_code(args))
        if isinstance(ref_model, str):
            ref_model = load_model(ref_model, self._load_kwargs(getattr(args, "ref_model_init_kwargs", None), args))
        if processing_class is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", None)
            if not name:
                raise ConfigError("pass processing_class (the tokenizer): it cannot be found from the model.")
            load = load_processor if is_vision_model(model) else load_tokenizer
            processing_class = load(name, trust_remote_code=self._remote_code(args))
        tok = text_tokenizer(processing_class)
        set_pad_token(tok, getattr(args, "pad_token", None))  # DPOConfig.pad_token, as TRL
        ensure_pad_token(tok)
        vision = is_vision_processor(processing_class)
        if model is not None and is_vision_model(model) and not vision:
            check_no_images(train_dataset, eval_dataset)
        check_streams(args, train_dataset, eval_dataset, vision=vision)
        self.streaming = any(is_stream(ds) for ds in [train_dataset, *(
            eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])])
        data_tok = processing_class if vision else tok  # a VLM's processor expands the prompts' image tokens
        self.is_encoder_decoder = resolve_encoder_decoder(model, args.is_encoder_decoder)
        self.list_rows = self._wants_list_rows(args, train_dataset, eval_dataset)  # one prompt, several answers
        if self.list_rows:
            check_list_rows(args, encoder_decoder=self.is_encoder_decoder, vision=vision, streaming=self.streaming)

        if peft_config is not None:
            model = apply_peft(model, peft_config, gradient_checkpointing=args.gradient_checkpointing)
        if args.disable_dropout and model is not None:
            disable_dropout(model)
        self.objective = objective_from_config(args)
        if self.list_rows:  # the family's pair objective on each prompt's ordered answer pairs, or listwise
            self.objective = ListObjective.from_config(self.objective, args)
        self.reference = self._reference_provider(model, ref_model, args)  # None: the objective needs none
        self.logps_options = LogpsOptions.from_args(args)  # the policy's; providers hold the reference's

        self.data_reports = {}
        train_dataset = self._prepare(train_dataset, data_tok, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare(v, data_tok, args, f"eval/{k}") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare(eval_dataset, data_tok, args, "eval")
        pad_id = args.padding_value if args.padding_value is not None else tok.pad_token_id
        multiple = args.pad_to_multiple_of  # sequence lengths padded up to a multiple of it (None: not)
        if data_collator is None and vision:
            data_collator = VisionPreferenceCollator(pad_token_id=pad_id, pad_to_multiple_of=multiple,
                                                     image_processor=processing_class.image_processor)
        collator_cls = (ListCollator if self.list_rows else
                        EncoderDecoderCollator if self.is_encoder_decoder else PreferenceCollator)
        data_collator = data_collator or collator_cls(pad_token_id=pad_id, pad_to_multiple_of=multiple)

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
        # MoE load-balancing loss: whether it is added and its weight (each family as TRL's trainer of it).
        self.router_aux_loss_coef, self.aux_loss_enabled = self._router_aux_loss(unwrap(self.model), args)
        self.logps_options = dataclasses.replace(self.logps_options, router_logits=self.aux_loss_enabled)
        self.logps_path = choose_logps_path(self.model, self.logps_options)  # once: a fixed property of the model
        logger.info(self.logps_path.description)
        self._stored_metrics = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        self._total_train_tokens = None  # TRL's num_tokens: attention-mask tokens of every train batch so far
        self.base_model_name = base_model_name(self.model)
        self.dataset_names = dataset_names  # named in the model card
        self.nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        self._finish_setup()

    # ------------------------------------------------------- family hooks

    # dtype of a model given by name, unless model_init_kwargs sets one (None: the checkpoint's). float32 for both
    # families, as TRL's DPOTrainer: optimizer updates smaller than bf16's resolution would vanish in bf16 weights.
    # TRL's experimental ORPOTrainer leaves it to from_pretrained (the checkpoint's dtype) — a departure on purpose.
    default_model_dtype: str | None = "float32"

    def _router_aux_loss(self, model, args) -> tuple[float, bool]:
        """(coefficient, enabled) of the MoE router's auxiliary loss. As TRL's ORPOTrainer: added when the model's
        config asks for router logits (``output_router_logits``), weighted by its ``router_aux_loss_coef``."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
        enabled = bool(getattr(config, "output_router_logits", False))
        if enabled and coef == 0.0:
            logger.warning("the model's config asks for router logits (output_router_logits) but its "
                           "router_aux_loss_coef is 0, so the auxiliary loss adds nothing")
        return coef, enabled and coef != 0.0

    def _reference_provider(self, model, ref_model, args):
        """Where reference log-probs come from; None for objectives without a reference (ORPO)."""
        if ref_model is not None:
            raise ConfigError(f"{type(self).__name__} uses no reference model; drop ref_model.")
        return None

    def _load_kwargs(self, init_kwargs: dict | None, args) -> dict:
        """from_pretrained kwargs of a model given by name: `init_kwargs`, args.trust_remote_code, the default dtype."""
        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if self.default_model_dtype is not None and "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = self.default_model_dtype
        return kwargs

    @staticmethod
    def _remote_code(args) -> bool:
        return bool(args.trust_remote_code or (args.model_init_kwargs or {}).get("trust_remote_code"))

    @property
    def ref_model(self):
        """The separate reference model (as TRL's attribute), or None: none is held (a PEFT policy with its adapter
        disabled or switched, precomputed log-probs, reference_free, ORPO)."""
        model = getattr(self.reference, "model", None)
        return None if model is None or model is self.model else model

    def _with_reference_logps(self, dataset, split: str):
        """An evaluation set first seen by `evaluate`, with what the reference needs of it (DPO: precomputed log-probs)."""
        return dataset

    def _build_accelerator_args(self, **kwargs):
        args = super()._build_accelerator_args(**kwargs)
        loader = args.get("dataloader_config")
        if getattr(self, "streaming", False) and loader is not None and loader.dispatch_batches is not False:
            # accelerate would read a stream on the main process and concatenate the padded batches of all
            # processes, which differ in length (TRL forces False too); each process reads its own shard instead.
            if loader.dispatch_batches:
                logger.warning("dispatch_batches=True is turned off for streamed data (datasets.IterableDataset)")
            loader.dispatch_batches = False
        return args

    def _finish_setup(self) -> None:
        """Wiring that needs the built Trainer (accelerator, data loaders); nothing for ORPO."""

    def _extra_state(self) -> dict:
        """What this trainer adds to each checkpoint's preftune_state.json."""
        return {"nonfinite_skipped": self.nonfinite_guard.skipped}

    def _save_extra_files(self, folder: str) -> None:
        """Files this trainer adds to each checkpoint folder."""

    def _restore_extra_state(self, folder: str, state: dict) -> None:
        self.nonfinite_guard.skipped = state.get("nonfinite_skipped", 0)

    # ------------------------------------------------------------------ data

    def _prepare(self, dataset, tokenizer, args, split):
        """Rows of any supported shape -> token ids; `PreparedData` (and data already tokenized) as it is.
        A stream is tokenized as it is read (no report: nothing is counted before training)."""
        if isinstance(dataset, PreparedData):
            self.data_reports[split] = dataset.report
            return dataset.dataset
        if dataset is None or is_tokenized(dataset):
            return dataset
        prepared, report = self._tokenize_split(dataset, tokenizer, args, split)
        if report is not None:
            self.data_reports[split] = report
        return prepared

    def _wants_list_rows(self, args, train_dataset, eval_dataset) -> bool:
        """Whether this run trains on list rows (see the module docstring); KTO overrides it."""
        return wants_list_rows(args, train_dataset, eval_dataset)

    def _tokenize_split(self, dataset, tokenizer, args, split):
        """Raw rows -> (token ids, the report of how they were made; None for a stream). A family with
        its own row shape (KTO's unpaired rows) overrides this."""
        if self.list_rows:
            prepared = prepare_list_split(dataset, tokenizer, args, split)
            return prepared.dataset, prepared.report
        if is_stream(dataset):
            return prepare_stream_split(dataset, tokenizer, args, split, is_encoder_decoder=self.is_encoder_decoder), None
        prepared = prepare_split(dataset, tokenizer, args, split, is_encoder_decoder=self.is_encoder_decoder)
        return prepared.dataset, prepared.report

    def _for_evaluation(self, dataset, split: str):
        """A data set given to `evaluate`: prepared (rows of any shape, or a stream) and given its reference log-probs."""
        check_streams(self.args, None, {split: dataset})
        pc = self.processing_class
        prepared = self._prepare(dataset, pc if is_vision_processor(pc) else text_tokenizer(pc), self.args, split)
        return self._with_reference_logps(prepared, split)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """As Trainer.evaluate. A data set given here (rows of any supported shape, a stream, or a dict of named
        sets) is prepared first, as the trainer's own; a name picks one of the named sets the trainer was built with.
        Named sets are evaluated one by one, each logged under ``eval_NAME_...`` (``metric_key_prefix_NAME_``)."""
        if isinstance(eval_dataset, str):  # Trainer's own loop over named sets calls back with a name
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if eval_dataset is None:
            sets = self.eval_dataset
            if isinstance(sets, dict):
                sets = {name: name for name in sets}  # prepared at construction: evaluated by name (cached loaders)
        elif isinstance(eval_dataset, dict):
            sets = {name: self._for_evaluation(ds, f"eval/{name}") for name, ds in eval_dataset.items()}
        else:
            sets = self._for_evaluation(eval_dataset, "eval")
        if isinstance(sets, dict):
            metrics = {}
            for name, dataset in sets.items():
                metrics.update(super().evaluate(dataset, ignore_keys=ignore_keys,
                                                metric_key_prefix=f"{metric_key_prefix}_{name}"))
        else:
            metrics = super().evaluate(sets, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.args.generate_during_eval:
            log_eval_generations(self)
        return metrics

    def _set_signature_columns_if_needed(self):
        self._signature_columns = [*LIST_COLUMNS, LIST_REF_COLUMN] if self.list_rows else list(_COLUMNS)

    def _get_train_sampler(self, train_dataset=None):
        return super()._get_train_sampler(self._for_sampler(train_dataset or self.train_dataset))

    def _get_eval_sampler(self, eval_dataset):
        return super()._get_eval_sampler(self._for_sampler(eval_dataset))

    def _for_sampler(self, dataset):
        """Length-aware samplers get each pair's length (they would look for an input_ids column)."""
        if self.args.train_sampling_strategy in LENGTH_SAMPLERS and isinstance(dataset, datasets.Dataset):
            add = with_list_lengths if self.list_rows else with_pair_lengths
            return add(dataset, self.args.length_column_name)
        return dataset

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = batch_from_inputs(inputs)  # PreferenceBatch, ListBatch, or Seq2SeqBatch for encoder-decoder models
        # list rows: the objective bound to this batch's answers and scores (`ListObjective.for_batch`)
        objective = self.objective.for_batch(batch) if isinstance(batch, ListBatch) else self.objective
        request = objective.logps_request(batch.completion_mask)  # ORPO's NLL rows, LD-DPO weights, WPO
        policy = self.logps_path(model, batch, request)
        ref = None
        if self.reference is not None:  # LD-DPO weights the reference's log-probs too (TRL 1.16)
            ref = self.reference.logps(model, batch, objective.reference_request(batch.completion_mask))
        out = objective(policy, ref, nll_tokens=self._nll_tokens_per_step(num_items_in_batch, model))
        loss = out.loss
        metrics = dict(out.metrics)
        if self.aux_loss_enabled and policy.aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
            metrics["aux_loss"] = policy.aux_loss.detach().reshape(1)
        if model.training:
            self.nonfinite_guard.note_loss(loss)
        # TRL's num_tokens: the attention-mask tokens of the (2B, T) rows, whatever layout the model ran
        tokens = batch.attention_mask.sum() if model.training and hasattr(batch, "attention_mask") else None
        self._store_metrics(metrics, "train" if model.training else "eval", out.token_metrics, tokens)
        return (loss, metrics) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """Trainer's hook, called once per gradient-accumulation window: the tokens the objective's NLL
        averages over in the whole window (all processes), so that the window's NLL is ONE token mean —
        4 pairs × 1 step equals 1 pair × 4 accumulated steps, and one step equals TRL's batch token mean.
        None when the objective has no such NLL (DPO without `sft`) or the batch is not decoder-only."""
        count = getattr(self.objective, "nll_token_count", None)
        if count is None or not batch_samples or "attention_mask" not in batch_samples[0]:
            return None
        counts = [count(batch_from_inputs(batch)) for batch in batch_samples]
        if any(c is None for c in counts):  # list rows under DPO: no NLL
            return None
        total = sum(counts)
        total = torch.as_tensor(total, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def _nll_tokens_per_step(self, num_items_in_batch, model):
        """The NLL's denominator for one micro-batch: the window's tokens / (accumulation steps × processes),
        because Trainer divides each micro-batch's loss by the accumulation steps and DDP averages over the
        processes. None (the micro-batch's own token count) in evaluation and without a window count."""
        if num_items_in_batch is None or not model.training:
            return None
        return num_items_in_batch / (self.current_gradient_accumulation_steps * max(self.args.world_size, 1))

    def training_step(self, *args, **kwargs):
        # Forward and backward both run inside: activations saved in the forward go to the CPU, come back in backward.
        with ActivationOffloading(self.model) if self.args.activation_offloading else contextlib.nullcontext():
            return super().training_step(*args, **kwargs)

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
        checkpoints.save_extra_state(folder, self._extra_state())
        self._save_extra_files(folder)

    def _load_extra_state(self, folder: str) -> None:
        self._restore_extra_state(folder, checkpoints.load_extra_state(folder))

    def save_resolved_config(self) -> None:
        """Write the full, resolved config next to the checkpoints (tokens redacted, absolute paths by their last name)."""
        if not self.is_world_process_zero():
            return
        from preftune.outputs.card import CONFIG_FILE
        from preftune.files import atomic_write
        from preftune.outputs.redact import shareable_config

        config = shareable_config({"trainer": type(self).__name__, **self.args.to_dict(),
                                   "is_encoder_decoder": self.is_encoder_decoder})  # as resolved from the model
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        atomic_write(os.path.join(self.args.output_dir, CONFIG_FILE), text.encode("utf-8"))
