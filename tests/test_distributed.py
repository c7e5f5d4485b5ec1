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
@pytest.mark.parametrize("command, sharding", [("orpo", []), ("dpo", []), ("dpo", ["--fsdp", "full_shard"])])
def test_two_processes_equal_one_process_with_double_accumulation(tmp_path, command, sharding):
    """DDP, and FSDP full shard (the policy sharded; DPO's frozen reference copy prepared by accelerate too)."""
    common = ["--model", tiny_model_path(), "--dataset", "tiny-prefs#32", "--num_train_epochs", "1",
              "--per_device_train_batch_size", "2", "--logging_steps", "1", "--eval_strategy", "no",
              "--learning_rate", "5e-4", "--report_to", "none", "--save_strategy", "no"]
    ddp = preftune(command, *common, *sharding, "--output_dir", "ddp", cwd=tmp_path, env={"NPROC_PER_NODE": "2"})
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


def test_parallel_presets_resolve_to_shipped_configs(monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from preftune import ConfigError, DPOConfig
    from preftune.train.parallel import resolve_presets

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    for name, stage in (("zero2", 2), ("zero3", 3), ("zero3_offload", 3)):
        args = SimpleNamespace(deepspeed=name, fsdp=None, fsdp_config=None)
        resolve_presets(args)
        config = json.load(open(args.deepspeed))
        assert config["zero_optimization"]["stage"] == stage
        assert ("offload_param" in config["zero_optimization"]) == name.endswith("offload")
    args = SimpleNamespace(deepspeed=None, fsdp="full_shard", fsdp_config=None)
    resolve_presets(args)
    assert args.fsdp == "full_shard auto_wrap" and json.load(open(args.fsdp_config))["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    with pytest.raises(ConfigError, match="pick one"):
        resolve_presets(SimpleNamespace(deepspeed="zero3", fsdp="full_shard", fsdp_config=None))
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_presets(SimpleNamespace(deepspeed="zero9", fsdp=None, fsdp_config=None))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the deepspeed package"):
        DPOConfig(output_dir="x", deepspeed="zero3")
    # FSDP goes through TrainingArguments into accelerate's plugin settings; no layer class named, so accelerate
    # wraps the model's own _no_split_modules (the decoder layer)
    config = DPOConfig(output_dir="x", fsdp="full_shard")
    assert config.fsdp_config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "transformer_layer_cls_to_wrap" not in config.fsdp_config
