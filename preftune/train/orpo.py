"""`ORPOTrainer`: ORPO (Hong, Lee & Thorne 2024, arXiv 2403.07691). No reference model: the
base trainer's wiring is all it needs; the loss is `preftune.losses.orpo_loss` through
`preftune.train.objectives.ORPOObjective`."""
from __future__ import annotations

from preftune.train.config import ORPOConfig
from preftune.train.trainer import PreferenceTrainer


class ORPOTrainer(PreferenceTrainer):
    """ORPO: Hong, Lee & Thorne 2024. No reference model. TRL's constructor signature."""

    config_class = ORPOConfig
    default_output_dir = "orpo-output"

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, model_init=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, peft_config=None, compute_metrics=None, tokenizer=None,
                 *, dataset_names=None):
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, model_init=model_init,
            callbacks=callbacks, optimizers=optimizers, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            peft_config=peft_config, compute_metrics=compute_metrics, tokenizer=tokenizer, dataset_names=dataset_names,
        )
