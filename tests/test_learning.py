"""Training learns: on held-out prompts of the bundled synthetic task, the preferred style wins.

The bundled tiny model was pre-trained on chosen and rejected answers alike, so before
preference training it has no preference (held-out accuracy near chance); after a short
run, ORPO, DPO, CPO and SimPO must all rank chosen above rejected on ≥ 90% of unseen prompts, and
the held-out margin must grow.
"""
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data

pytestmark = pytest.mark.slow


def run(trainer_cls, config_cls, tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path), learning_rate=2e-3, num_train_epochs=1, per_device_train_batch_size=8,
        per_device_eval_batch_size=32, warmup_steps=5, logging_steps=10, save_strategy="no", beta=0.5,
        max_length=256, max_prompt_length=128, seed=0,
    )
    settings.update(overrides)
    args = config_cls(**settings)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    trainer = trainer_cls(model=model, args=args, processing_class=tok,
                          train_dataset=load_preference_data("tiny-prefs", "train"),
                          eval_dataset=load_preference_data("tiny-prefs", "test"))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    return before, after


def test_orpo_learns_held_out_preference(tmp_path):
    before, after = run(ORPOTrainer, ORPOConfig, tmp_path)
    print("ORPO before", before, "\nafter", after)
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]
    assert after["eval_log_odds_chosen"] > before["eval_log_odds_chosen"]


def test_dpo_learns_held_out_preference(tmp_path):
    before, after = run(DPOTrainer, DPOConfig, tmp_path, learning_rate=1e-3)
    print("DPO before", before, "\nafter", after)
    # policy == reference at the start: zero margins, accuracy 0 (ties are not wins)
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > 0.5


def test_cpo_learns_held_out_preference(tmp_path):
    before, after = run(CPOTrainer, CPOConfig, tmp_path)  # sigmoid, cpo_alpha 1 (TRL's defaults), β 0.5
    print("CPO before", before, "\nafter", after)
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]


def test_simpo_learns_held_out_preference(tmp_path):
    before, after = run(CPOTrainer, CPOConfig, tmp_path, loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0)
    print("SimPO before", before, "\nafter", after)
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]


@pytest.mark.parametrize("command", ["cpo", "simpo"])
def test_cli_cpo_and_simpo_learn_held_out_preference(tmp_path, capsys, command):
    """`preftune cpo|simpo` with one flag: the demo (bundled model and data) for one epoch."""
    from preftune.cli import main

    assert main([command, "--num_train_epochs", "1", "--output_dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    held_out = [line for line in out.splitlines() if line.startswith("preftune: held-out")][-1]
    assert float(held_out.split("rewards/accuracies=")[1].split(",")[0]) >= 0.9, held_out
