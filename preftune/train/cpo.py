"""`CPOTrainer`: CPO (Xu et al. 2024, arXiv 2401.08417), SimPO (Meng, Xia & Chen 2024, arXiv
2405.14734) and AlphaPO (Gupta et al. 2025, arXiv 2501.03884), TRL 1.16's experimental CPOTrainer.
No reference model (like ORPO): the base trainer's wiring is all it needs, each pair's prompt run
once (prefix sharing) as for DPO; the loss is `preftune.losses.cpo` through
`preftune.train.objectives.CPOObjective`."""
from __future__ import annotations

from preftune.train.cpo_config import CPOConfig
from preftune.train.trainer import PreferenceTrainer


class CPOTrainer(PreferenceTrainer):
    """CPO / SimPO / AlphaPO. No reference model. TRL's constructor signature."""

    config_class = CPOConfig
    default_output_dir = "cpo-output"

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
