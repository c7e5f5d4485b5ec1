"""Gradient accumulation invariance: 4 pairs × 1 step equals 1 pair × 4 accumulated steps."""
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data


def four_pairs():
    return Dataset.from_list(list(load_preference_data("tiny-prefs", "train").select(range(4))))


def one_update(trainer_cls, config_cls, tmp_path, batch, accumulation):
    args = config_cls(
        output_dir=str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1e-2, logging_steps=1,
        save_strategy="no", seed=0, beta=0.5,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float64)
    trainer = trainer_cls(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                          train_dataset=four_pairs())
    trainer.train()
    loss = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    return loss, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("trainer_cls,config_cls", [(ORPOTrainer, ORPOConfig), (DPOTrainer, DPOConfig)])
def test_accumulation_4x1_equals_1x4(tmp_path, trainer_cls, config_cls):
    loss_a, params_a = one_update(trainer_cls, config_cls, tmp_path, batch=4, accumulation=1)
    loss_b, params_b = one_update(trainer_cls, config_cls, tmp_path, batch=1, accumulation=4)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float64).state_dict()
    moved = 0
    for name, p in params_a.items():
        assert torch.allclose(p, params_b[name], atol=1e-9, rtol=1e-7), name
        moved += int(not torch.equal(p, start[name]))
    assert moved > 0  # the update happened (and was the same both ways)
