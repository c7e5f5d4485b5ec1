"""Data parallel on CPU (gloo): two processes equal one process with twice the gradient accumulation."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preftune.assets import tiny_model_path
from tests.test_cli import preftune


def _losses(folder):
    rows = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["orpo", "dpo"])
def test_two_processes_equal_one_process_with_double_accumulation(tmp_path, command):
    common = ["--model", tiny_model_path(), "--dataset", "tiny-prefs#32", "--num_train_epochs", "1",
              "--per_device_train_batch_size", "2", "--logging_steps", "1", "--eval_strategy", "no",
              "--learning_rate", "5e-4", "--report_to", "none", "--save_strategy", "no"]
    ddp = preftune(command, *common, "--output_dir", "ddp", cwd=tmp_path, env={"NPROC_PER_NODE": "2"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = preftune(command, *common, "--gradient_accumulation_steps", "2", "--output_dir", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp_losses, one_losses = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert len(ddp_losses) == len(one_losses) == 8  # 32 pairs / (2 per process x 2) per step
    for (s1, l1), (s2, l2) in zip(ddp_losses, one_losses):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-6)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
