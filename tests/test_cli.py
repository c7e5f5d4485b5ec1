"""The command line, run as a user runs it: a real process."""
import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from preftune.assets import tiny_dataset_path, tiny_model_path

pytestmark = pytest.mark.slow


def preftune(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "preftune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_demo_trains_bundled_model_and_writes_loadable_folder(tmp_path):
    out = preftune("orpo", "--num_train_epochs", "1", "--eval_steps", "25", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "this is the demo" in out.stdout
    assert "prepared 600" in out.stdout  # the data report comes before training
    lines = [l for l in out.stdout.splitlines() if " eval " in l and "acc" in l]
    assert lines, out.stdout[-2000:]
    held_out = [l for l in out.stdout.splitlines() if l.startswith("preftune: held-out")][-1]
    accuracy = float(held_out.split("rewards/accuracies=")[1].split(",")[0])
    assert accuracy >= 0.9
    folder = tmp_path / "outputs" / "orpo-tiny-llama"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_model_path()).config.vocab_size
    config = json.loads((folder / "preftune_config.json").read_text())
    assert config["trainer"] == "ORPOTrainer" and config["beta"] == 0.5
    assert "before:" in out.stdout and "after:" in out.stdout


def test_dpo_with_lora_by_path(tmp_path):
    out = preftune("dpo", "--model", tiny_model_path(), "--dataset", f"{tiny_dataset_path()}#32", "--max_steps", "3",
                   "--use_peft", "--lora_r", "4", "--output_dir", "run", "--report_to", "none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "adapter_config.json").exists()
    assert "this is the demo" not in out.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["orpo", "--model", "/no/such/model"], "does not exist"),
        (["orpo", "--truncation_mode", "middle"], "truncation_mode"),
        (["orpo", "--max_length", "100", "--max_prompt_length", "200"], "--max_prompt_length"),
        (["dpo", "--loss_type", "nope"], "loss_type='nope'"),
        (["orpo", "--dataset", "missing.jsonl"], "missing.jsonl"),
        (["orpo", "--dataset", "tiny-prefs#0"], "positive row count"),
        (["sft"], "unknown command"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    out = preftune(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    error_lines = [l for l in out.stderr.splitlines() if l.startswith("preftune: error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], out.stderr[-2000:]


def test_bad_row_is_reported_with_its_number(tmp_path):
    rows = [{"prompt": "hi", "chosen": "a b", "rejected": "c d"}] * 3 + [{"prompt": "hi", "chosen": "same", "rejected": "same"}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = preftune("orpo", "--model", tiny_model_path(), "--dataset", str(path), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "row 3" in out.stderr
