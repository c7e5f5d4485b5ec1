"""`KTOTrainer`: KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired rows; TRL 1.16's KTOTrainer, drop-in.

Rows are prepared by `preftune.data.unpaired` into pairs (completion, KL completion) that share
their prompt, so one forward over 2B rows gives both the rewards' log-probs and the KL estimate's
(TRL runs a second forward for the KL rows), with each prompt computed once (prefix sharing).
Every reference strategy is DPO's, reused as it is (`DPOTrainer`): a frozen copy, the PEFT
adapter disabled, a second adapter, precomputed log-probs with the on-disk cache (for the KL
rows too: they are the pairs' second half), TR-DPO sync.
"""
from __future__ import annotations

import logging

import torch

from preftune.data.collate import PreferenceBatch, PreferenceCollator, REF_COLUMNS
from preftune.data.unpaired import UnpairedCollator, prepare_unpaired
from preftune.errors import ConfigError
from preftune.losses import kl_reference_point, weighting_rule
from preftune.train.dpo import DPOTrainer
from preftune.train.inputs import is_stream
from preftune.train.kto_config import KTOConfig

logger = logging.getLogger(__name__)


def log_weighting(report, desirable_weight: float, undesirable_weight: float) -> None:
    """The KTO paper's rule for imbalanced data, with this data's numbers; a warning outside it."""
    n_d, n_u = report.n_desirable, report.n_undesirable
    ratio, inside = weighting_rule(n_d, n_u, desirable_weight, undesirable_weight)
    text = (f"KTO weighting: λ_D·n_D / (λ_U·n_U) = {desirable_weight:g}·{n_d} / ({undesirable_weight:g}·{n_u}) = "
            f"{ratio:.3f}; the KTO paper (eq. 8) recommends [1, 4/3]")
    if inside:
        logger.info(text)
    else:
        low, high = n_u * undesirable_weight / max(n_d, 1), 4 / 3 * n_u * undesirable_weight / max(n_d, 1)
        logger.warning("%s: set desirable_weight in [%.2f, %.2f] (or undesirable_weight accordingly)", text, low, high)


class KTOTrainer(DPOTrainer):
    """KTO and unpaired APO-zero. TRL 1.16's constructor signature; `ref_model` optional (see `reference_for`)."""

    config_class = KTOConfig
    default_output_dir = "kto-output"

    def __init__(self, model=None, ref_model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None, tokenizer=None,
                 model_init=None, optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 *, dataset_names=None):
        if quantization_config is not None:
            raise ConfigError("quantization_config is not taken by preftune's KTOTrainer; load the model quantized "
                              "(model_init_kwargs) and pass it.")
        super().__init__(
            model=model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
            callbacks=callbacks, optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics, peft_config=peft_config,
            compute_metrics=compute_metrics, tokenizer=tokenizer, dataset_names=dataset_names,
        )
        if self.is_encoder_decoder:
            raise ConfigError("KTOTrainer trains decoder-only models; an encoder-decoder model is not supported.")
        if type(self.data_collator) is PreferenceCollator:  # the pair collator, plus each row's label
            dc = self.data_collator
            self.data_collator = UnpairedCollator(pad_token_id=dc.pad_token_id, pad_to_multiple_of=dc.pad_to_multiple_of)

    # ------------------------------------------------------------------ data

    def _wants_list_rows(self, args, train_dataset, eval_dataset) -> bool:
        from preftune.train.inputs import wants_list_rows

        if wants_list_rows(args, train_dataset, eval_dataset):
            raise ConfigError("the data holds list rows (one prompt, several scored answers), which KTO does not train "
                              "on (it takes unpaired rows labelled desirable or not); use DPOTrainer, ORPOTrainer or "
                              "CPOTrainer for list rows.")
        return False

    def _tokenize_split(self, dataset, tokenizer, args, split):
        if is_stream(dataset):
            raise ConfigError(f"the {split} set is a stream (IterableDataset); KTOTrainer needs a datasets.Dataset or "
                              "a list of rows (the KL completions are built from whole batches of rows).")
        return prepare_unpaired_split(dataset, tokenizer, args, split)

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "label", *REF_COLUMNS]

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = PreferenceBatch.from_inputs(inputs)
        labels = inputs["label"].to(torch.bool)
        request = self.objective.logps_request(batch.completion_mask)
        policy = self.logps_path(model, batch, request)
        ref = self.reference.logps(model, batch, self.objective.reference_request(batch.completion_mask))
        if self.objective.calculate_kl:  # z₀: the mean over processes of each one's mean, clamped at 0 (as TRL)
            local = self.objective.local_kl(policy, ref).reshape(1)
            kl = kl_reference_point(self.accelerator.gather(local) if self.accelerator.num_processes > 1 else local)
        else:
            kl = torch.zeros((), device=labels.device)
        out = self.objective(policy, ref, labels, kl)
        loss = out.loss
        metrics = {}
        if self.aux_loss_enabled and policy.aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
            metrics["aux_loss"] = policy.aux_loss.detach().reshape(1)
        if model.training:
            self.nonfinite_guard.note_loss(loss)
        b = batch.batch_size  # TRL's num_tokens: the rows' own tokens (not the KL rows')
        tokens = batch.attention_mask[:b].sum() if model.training else None
        self._store_metrics(metrics, "train" if model.training else "eval", out.token_metrics, tokens)
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, start_time=None) -> None:
        """TRL's rewards/margins (chosen - rejected, when the window has both); a metric whose rows are absent
        from the window (no undesirable row: no rewards/rejected) is not logged, as TRL."""
        from preftune.outputs.history import eval_prefix

        stored = self._stored_metrics["train" if eval_prefix(logs) is None else "eval"]
        chosen, rejected = stored.get("rewards/chosen"), stored.get("rewards/rejected")
        for name in [k for k, (_, count) in stored.items() if not count]:
            del stored[name]
        if chosen and rejected and chosen[1] and rejected[1]:
            stored["rewards/margins"] = [chosen[0] / chosen[1] - rejected[0] / rejected[1], 1]
        super().log(logs, start_time)


def prepare_unpaired_split(dataset, tokenizer, args: KTOConfig, split: str):
    """Rows -> (prepared data set, `UnpairedReport`), logged; the KTO weighting rule for the train split."""
    from preftune.data.tokenize import text_tokenizer

    with args.main_process_first(desc=f"preparing {split} data"):
        prepared, report = prepare_unpaired(dataset, text_tokenizer(tokenizer), max_length=args.max_length,
                                            kl_block=args.per_device_train_batch_size,
                                            skip_bad_rows=args.skip_bad_rows, split=split)
    logger.log(logging.WARNING if report.n_bad_rows else logging.INFO, "%s data: %s", split, report.summary())
    if split == "train":
        log_weighting(report, args.desirable_weight, args.undesirable_weight)
    return prepared, report
