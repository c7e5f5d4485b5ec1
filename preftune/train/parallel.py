"""Scaling out on existing engines: shipped DeepSpeed / FSDP presets, and the DPO reference under them.

`--deepspeed zero2|zero3|zero3_offload` and `--fsdp full_shard|full_shard_offload` name
configs shipped in `preftune/configs/` (any other value is passed to transformers as
given: a JSON path, a dict, or transformers' own `--fsdp` words). The FSDP presets wrap
each decoder layer: TRANSFORMER_BASED_WRAP with no class named lets accelerate take the
model's own `_no_split_modules` (LlamaDecoderLayer, Qwen2DecoderLayer, ...).

A separate DPO reference model (a frozen copy, or `ref_model`) must live in the same
engine as the policy: under DeepSpeed it is wrapped by `deepspeed.initialize` for
inference (sharded under ZeRO-3, whole otherwise; no optimizer), under FSDP/DDP it
goes through `accelerator.prepare_model(..., evaluation_mode=True)`. With
`precompute_ref_log_probs` or a LoRA adapter there is no reference model to place.
"""
from __future__ import annotations

import copy
import importlib.util
import os

from preftune.errors import ConfigError

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")  # preftune/configs
DEEPSPEED_PRESETS = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}
FSDP_PRESETS = {
    "full_shard": ("full_shard auto_wrap", "fsdp_full_shard.json"),
    "full_shard_offload": ("full_shard auto_wrap offload", "fsdp_full_shard_offload.json"),
}


def preset_path(file: str) -> str:
    return os.path.join(_CONFIGS, file)


def resolve_presets(args) -> None:
    """Preset names in args.deepspeed / args.fsdp -> the shipped files (in place, before TrainingArguments reads them)."""
    if isinstance(args.deepspeed, str) and args.deepspeed in DEEPSPEED_PRESETS:
        args.deepspeed = preset_path(DEEPSPEED_PRESETS[args.deepspeed])
    if args.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--deepspeed needs the deepspeed package (pip install deepspeed) and CUDA GPUs; "
                          "drop it to train with plain data parallel.")
    if isinstance(args.deepspeed, str) and not os.path.isfile(args.deepspeed) and not args.deepspeed.lstrip().startswith("{"):
        raise ConfigError(f"--deepspeed {args.deepspeed!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a JSON file.")
    fsdp = args.fsdp.strip() if isinstance(args.fsdp, str) else None
    if fsdp in FSDP_PRESETS:
        words, file = FSDP_PRESETS[fsdp]
        args.fsdp = words
        if args.fsdp_config is None:
            args.fsdp_config = preset_path(file)
    if args.fsdp and args.deepspeed:
        raise ConfigError("--fsdp and --deepspeed are two ways to shard the same model; pick one.")


def prepare_reference_model(accelerator, model):
    """Place a frozen reference model in the policy's engine, for forward passes only."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return accelerator.prepare_model(model, evaluation_mode=True)
    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        config["zero_optimization"] = {"stage": 0}  # stages 1-2 shard optimizer state, which a frozen model has none of
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
