"""`DPOTrainer`: DPO (Rafailov et al. 2023, arXiv 2305.18290) and the DPO family selected by `loss_type`.

Everything only DPO needs is wired here, not in the shared base trainer: the reference
provider (`preftune.train.reference`, asked only when the objective needs a reference),
placing a separate reference model in the policy's engine (DDP/FSDP/DeepSpeed),
precomputed reference log-probs (one pass, then no reference model in memory), TR-DPO's
reference sync, and what these add to a checkpoint (BCO's running reward mean, the synced
reference's weights).
"""
from __future__ import annotations

import os

from preftune.data.collate import LIST_REF_COLUMN, REF_COLUMNS
from preftune.errors import ConfigError
from preftune.models import disable_dropout, is_peft_model
from preftune.train.dpo_config import DPOConfig
from preftune.train.parallel import prepare_reference_model
from preftune.train.precompute import attach_reference_logps, cache_path, reference_fingerprint
from preftune.train.reference import ModelReference, PrecomputedReference, reference_for
from preftune.train.sync import SyncReferenceCallback
from preftune.train.trainer import PreferenceTrainer

REF_WEIGHTS = "reference_model.safetensors"  # TR-DPO: the synced reference, saved with each checkpoint


class DPOTrainer(PreferenceTrainer):
    """DPO and its family. TRL's constructor signature; `ref_model` optional (see `reference_for`)."""

    config_class = DPOConfig
    default_output_dir = "dpo-output"

    def __init__(self, model=None, ref_model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 peft_config=None, tokenizer=None, model_init=None, *, dataset_names=None):
        super().__init__(
            model=model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics, peft_config=peft_config,
            compute_metrics=compute_metrics, tokenizer=tokenizer, dataset_names=dataset_names,
        )

    def _router_aux_loss(self, model, args) -> tuple[float, bool]:
        """As TRL's DPOTrainer: on for any MoE model (its config has ``output_router_logits``, whatever its value),
        weighted by args.router_aux_loss_coef, else the config's own coefficient; 0 turns it off."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        moe = hasattr(config, "output_router_logits")
        if args.router_aux_loss_coef and not moe:
            raise ConfigError(f"router_aux_loss_coef={args.router_aux_loss_coef} weights a Mixture-of-Experts router's "
                              f"auxiliary loss, but {type(model).__name__} is not a MoE model that returns one; drop it.")
        coef = args.router_aux_loss_coef
        coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0) if coef is None else float(coef)
        return coef, moe and coef != 0.0

    # ------------------------------------------------------------ reference

    def _reference_provider(self, model, ref_model, args):
        if ref_model is not None and args.disable_dropout:
            disable_dropout(ref_model)
        # Precomputing before any update: the policy itself is the reference, so no copy is made.
        return reference_for(args, model, ref_model, needs_reference=self.objective.needs_reference,
                             is_peft=is_peft_model(model), copy_policy=not args.precompute_ref_log_probs)

    def _finish_setup(self) -> None:
        if isinstance(self.reference, ModelReference) and self.reference.model is not self.model:
            self.reference.model = prepare_reference_model(self.accelerator, self.reference.model)
        if self.args.precompute_ref_log_probs:
            self._precompute_reference()
        if self.args.sync_ref_model:
            self.add_callback(SyncReferenceCallback(self.reference.model, self.model, self.args.ref_model_mixup_alpha,
                                                    self.args.ref_model_sync_steps))

    def _precompute_reference(self) -> None:
        """One pass of the reference over the data, then no reference model in memory while training."""
        provider, args = self.reference, self.args
        self._precompute_settings = dict(
            batch_size=args.precompute_ref_batch_size or args.per_device_eval_batch_size, device=args.device,
            cache_dir=args.ref_logps_cache_dir, request_for=self.objective.reference_request,
            # LD-DPO weights the reference's log-probs too, so ld_alpha is part of what they depend on
            weights_key=reference_fingerprint(provider, self.model) + ("" if args.ld_alpha is None else f"|ld={args.ld_alpha!r}"),
        )
        self.train_dataset = self._attach_reference_logps(self.train_dataset, "train", provider)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._attach_reference_logps(v, f"eval/{k}", provider)
                                 for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._attach_reference_logps(self.eval_dataset, "eval", provider)
        self.reference = PrecomputedReference()
        # Kept for evaluation sets first seen by `evaluate`: a PEFT reference (the adapter off or switched) costs no
        # memory; the policy itself is the reference until the first step; a separate reference model is held
        # until training starts (`train` lets go of it, which is what precomputing is for).
        self._late_reference = provider

    def _attach_reference_logps(self, dataset, split: str, provider):
        return attach_reference_logps(dataset, provider, self.model, self.data_collator, split=split,
                                      **self._precompute_settings)

    def _usable_late_reference(self):
        """The reference that can still compute log-probs for a new set, or None (see `_precompute_reference`)."""
        provider = getattr(self, "_late_reference", None)
        if isinstance(provider, ModelReference) and provider.model is self.model and self.state.global_step > 0:
            return None  # the policy was the reference, but it has been trained since
        return provider

    def _with_reference_logps(self, dataset, split: str):
        if (not self.args.precompute_ref_log_probs or dataset is None
                or {REF_COLUMNS[0], LIST_REF_COLUMN} & set(dataset.column_names)):
            return dataset
        if os.path.exists(cache_path(dataset, self._precompute_settings["cache_dir"],
                                     self._precompute_settings["weights_key"])):
            return self._attach_reference_logps(dataset, split, None)
        provider = self._usable_late_reference()
        if provider is None:
            raise ConfigError(f"the {split} set is first seen at evaluation, after training started, and with "
                              "precompute_ref_log_probs=True no reference model is kept to compute its reference "
                              "log-probs; pass it as eval_dataset when building the trainer, or evaluate it before "
                              "train(), or use a PEFT adapter (its reference is the base model).")
        return self._attach_reference_logps(dataset, split, provider)

    def train(self, *args, **kwargs):
        late = getattr(self, "_late_reference", None)
        if isinstance(late, ModelReference) and late.model is not self.model:
            self._late_reference = None  # a separate reference model is not held while training
        return super().train(*args, **kwargs)

    # ----------------------------------------------------------- checkpoints

    def _save_extra_files(self, folder: str) -> None:
        if self.args.sync_ref_model and isinstance(self.reference, ModelReference):
            from safetensors.torch import save_model

            save_model(self.accelerator.unwrap_model(self.reference.model), os.path.join(folder, REF_WEIGHTS))

    def _restore_extra_state(self, folder: str, state: dict) -> None:
        super()._restore_extra_state(folder, state)
        if self.args.sync_ref_model and isinstance(self.reference, ModelReference):
            ref_path = os.path.join(folder, REF_WEIGHTS)
            if not os.path.isfile(ref_path):
                raise ConfigError(f"{folder} has no {REF_WEIGHTS}: it was not saved by a TR-DPO run, so the synced "
                                  "reference cannot be restored; resume without --sync_ref_model or from another run.")
            from safetensors.torch import load_model

            load_model(self.accelerator.unwrap_model(self.reference.model), ref_path)
