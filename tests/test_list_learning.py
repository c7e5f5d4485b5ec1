"""Training on list rows learns a ranking: on held-out prompts with four graded answers, the implicit reward
orders the answers as their scores do.

Four answers per prompt from the bundled style task (tiny-prefs), graded by how cheerful they are:
3 the chosen answer (warm, with emoji), 2 the same with its emoji removed, 1 the curt rejected
answer, 0 the curt answer shouted in capitals. The bundled model was pre-trained on chosen and
rejected answers alike, so it has no preference at first; a fixed ordering of four answers
happens by chance for 1 prompt in 4! = 24.
"""
import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data

pytestmark = pytest.mark.slow


def no_emoji(text: str) -> str:
    return " ".join("".join(ch for ch in text if ord(ch) <= 0x2000).split())


def graded(split: str, n: int | None = None):
    pairs = load_preference_data("tiny-prefs", split)
    rows = []
    for r in pairs.select(range(n or len(pairs))):
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        answers = [chosen, no_emoji(chosen), rejected, rejected.upper()]
        rows.append({"prompt": r["prompt"], "completions": [[{"role": "assistant", "content": a}] for a in answers],
                     "scores": [3.0, 2.0, 1.0, 0.0]})
    return datasets.Dataset.from_list(rows)


def run(trainer_cls, config_cls, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), learning_rate=2e-3, num_train_epochs=1, per_device_train_batch_size=4,
                    per_device_eval_batch_size=16, warmup_steps=5, logging_steps=10, save_strategy="no", beta=0.5,
                    max_length=256, seed=0, report_to=[])
    settings.update(overrides)
    trainer = trainer_cls(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=config_cls(**settings),
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                          train_dataset=graded("train", 320), eval_dataset=graded("test"))
    before = trainer.evaluate()
    trainer.train()
    return before, trainer.evaluate()


@pytest.mark.parametrize("loss_type", ["sigmoid", "plackett_luce"])
def test_dpo_learns_to_rank_four_answers(tmp_path, loss_type):
    before, after = run(DPOTrainer, DPOConfig, tmp_path, learning_rate=1e-3, loss_type=loss_type)
    print(loss_type, "before", before, "\nafter", after)
    assert before["eval_rewards/ranking_accuracy"] == 0.0  # policy == reference: every reward 0, no pair ordered
    assert after["eval_rewards/ranking_accuracy"] >= 0.8
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > 1.0


def test_orpo_learns_to_rank_four_answers(tmp_path):
    before, after = run(ORPOTrainer, ORPOConfig, tmp_path, list_pairs="all")
    print("ORPO before", before, "\nafter", after)
    assert after["eval_rewards/ranking_accuracy"] >= before["eval_rewards/ranking_accuracy"] + 0.3
    assert after["eval_rewards/accuracies"] > before["eval_rewards/accuracies"]
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]
