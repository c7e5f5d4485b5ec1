"""KTO learns: after training on the bundled set's pairs split into unpaired rows, the trained policy
ranks the held-out chosen answer above the rejected one.

Held-out reward accuracy (as DPO's rewards/accuracies, the measure TRL logs for paired data): on
the paired test split, the implicit reward r(x, y) = β·(log π_θ(y|x) − log π_ref(y|x)) (summed
over the completion's tokens, the reference being the model training started from); a pair is a
win when r(x, chosen) > r(x, rejected). Computed here with plain forwards, apart from the trainer.
"""
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import KTOConfig, KTOTrainer
from preftune.assets import tiny_model_path
from preftune.data.formats import to_preference_pair
from preftune.data.sources import load_preference_data
from preftune.data.tokenize import tokenize_pair

pytestmark = pytest.mark.slow


def completion_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1:].sum().item()


def held_out_accuracy(policy, reference, tok, rows, beta=0.5):
    wins, margins = 0, []
    for i, row in enumerate(rows):
        tp = tokenize_pair(to_preference_pair(row, i), tok)
        r = [beta * (completion_logps(policy, tp.prompt_ids, c) - completion_logps(reference, tp.prompt_ids, c))
             for c in (tp.chosen_ids, tp.rejected_ids)]
        wins += r[0] > r[1]
        margins.append(r[0] - r[1])
    return wins / len(rows), sum(margins) / len(margins)


def test_kto_learns_held_out_preference(tmp_path):
    args = KTOConfig(output_dir=str(tmp_path), learning_rate=2e-3, num_train_epochs=1, per_device_train_batch_size=8,
                     per_device_eval_batch_size=32, warmup_steps=5, logging_steps=10, save_strategy="no", beta=0.5,
                     max_length=256, seed=0)
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    trainer = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=args, processing_class=tok,
                         train_dataset=load_preference_data("tiny-prefs", "train"))
    trainer.train()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path()).eval()
    rows = list(load_preference_data("tiny-prefs", "test"))
    before, _ = held_out_accuracy(reference, reference, tok, rows)
    after, margin = held_out_accuracy(trainer.model.eval(), reference, tok, rows)
    print("KTO held-out reward accuracy before", before, "after", after, "margin", margin)
    assert before == 0.0  # policy == reference: every reward is 0, a tie is not a win
    assert after >= 0.9 and margin > 0


def test_kto_cli_learns_held_out_preference(tmp_path):
    out = tmp_path / "kto"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "preftune", "kto", "--output_dir", str(out), "--num_train_epochs", "1",
                           "--learning_rate", "2e-3", "--eval_strategy", "no"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "this is the demo" in done.stdout
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path()).eval()
    policy = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    after, margin = held_out_accuracy(policy, reference, tok, list(load_preference_data("tiny-prefs", "test")))
    print("KTO CLI held-out reward accuracy", after, "margin", margin)
    assert after >= 0.9 and margin > 0
