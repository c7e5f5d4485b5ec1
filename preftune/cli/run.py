"""``preftune orpo|dpo`` flags -> a `Run`: the validated config, the model, LoRA and quantization.

`parse_run` reads the flags once (`preftune.cli.args.parse_flags`), resolves the
model's ``from_pretrained`` keyword arguments (the loading flags, ``--model_init_kwargs``
and QLoRA's quantization) and then builds the config once, with them: the validated
config is never changed afterwards. Nothing is loaded here; `preftune.cli.train` trains
the run. With no model and no data set, the run is the demo (see `preftune.cli.args`).

LoRA flags given while LoRA is off are unused, and a note says so. 4- and 8-bit
loading needs LoRA, bitsandbytes and a CUDA GPU; a run that lacks one says which,
before any model is downloaded. A loading flag (``--dtype``, ``--attn_implementation``,
``--device_map``, ``--trust_remote_code``) that contradicts ``--model_init_kwargs`` is an
error; the config's ``model_init_kwargs`` records what the model is loaded with (the
quantization as a plain dict).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from preftune.cli.args import MODEL_TYPES, Flags, ScriptArguments, config_class, model_name, parse_flags
from preftune.errors import ConfigError

__all__ = ["Run", "parse_run"]


@dataclass
class Run:
    """Everything the command line resolved, before any model or data is loaded."""

    command: str
    script: ScriptArguments
    config: object
    demo: bool
    model: str
    model_kwargs: dict
    peft_config: object = None
    notes: list = field(default_factory=list)
    config_kwargs: dict = field(default_factory=dict, repr=False)  # what `config` was built from

    def config_without_evaluation(self):
        """The config built afresh with eval_strategy="no" (no evaluation data was found): a new
        validated object, never the validated one changed."""
        return type(self.config)(**{**self.config_kwargs, "eval_strategy": "no"})


def parse_run(command: str, argv: list[str]) -> Run:
    """Flags (and --config YAML) -> a validated `Run`. Raises UserError for bad input.

    Problems are reported in this order: flag values (the config's own checks), a loading flag
    that contradicts --model_init_kwargs, the model name, LoRA, --merge, quantization."""
    flags = parse_flags(command, argv)
    script = flags.script
    init_kwargs, conflict = _with_loading_flags(flags)
    quantization_problem = _quantization_problem(script, flags.values)
    quantization = {} if quantization_problem else _quantization(script, flags.values)
    load_kwargs = {**(init_kwargs or {}), **quantization}
    if not quantization and "dtype" not in load_kwargs and "torch_dtype" not in load_kwargs:
        load_kwargs["dtype"] = "float32"  # TRL's command line's default (ModelConfig.dtype); --dtype sets another
    if quantization:  # the object goes to from_pretrained, its dict into the config
        init_kwargs = {**load_kwargs, "quantization_config": quantization["quantization_config"].to_dict()}
    config_cls = config_class(command)
    config_kwargs = {**flags.config_values(), "model_init_kwargs": init_kwargs}
    try:
        config = config_cls(**config_kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # transformers' own checks of flag values and combinations
        raise ConfigError(str(err).strip().splitlines()[0].rstrip(".") + ".") from None
    if conflict:
        raise ConfigError(conflict)
    notes: list[str] = []
    model = model_name(script)
    if script.model and script.model_type and script.model_type not in MODEL_TYPES:
        notes.append(f"--model_type {script.model_type!r} is not in preftune's table; unused, since --model gives the model.")
    peft_config = _peft_config(script, notes, flags.given)
    if script.merge and peft_config is None:
        raise ConfigError("--merge folds a LoRA adapter into its base, but this run trains all weights; add --use_peft or drop --merge.")
    if quantization_problem:
        raise ConfigError(quantization_problem)
    if script.check_model_is_latest:
        notes.append("--check_model_is_latest is accepted for ms-swift command lines; preftune loads the model as found and never checks for a newer version.")
    return Run(command, script, config, flags.demo, model, load_kwargs, peft_config, notes, config_kwargs)


def _with_loading_flags(flags: Flags) -> tuple[dict | None, str | None]:
    """--model_init_kwargs with the loading flags' kwargs added, and why they disagree (None: they agree)."""
    init_kwargs = flags.values["model_init_kwargs"]
    if not flags.model_kwargs:
        return init_kwargs, None
    merged = dict(init_kwargs or {})
    for key, value in flags.model_kwargs.items():
        if key in merged and merged[key] != value:
            return merged, f"--model_init_kwargs sets {key}={merged[key]!r} but the flags ask for {value!r}; keep one."
        merged[key] = value
    return merged, None


def _peft_config(script: ScriptArguments, notes: list, given: frozenset):
    lora_flags = sorted(given & {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "use_rslora", "use_dora"})
    if not script.use_peft:
        if lora_flags:
            notes.append(f"{', '.join('--' + f for f in lora_flags)} given but LoRA is off, so unused (add --use_peft, --lora or --sft_type lora).")
        return None
    if script.lora_r < 1:
        raise ConfigError(f"--lora_r {script.lora_r} must be at least 1.")
    if not 0 <= script.lora_dropout < 1:
        raise ConfigError(f"--lora_dropout {script.lora_dropout} must be in [0, 1).")
    from peft import LoraConfig

    names = [n.strip() for item in (script.lora_target_modules or ["ALL"]) for n in item.split(",") if n.strip()]
    upper = [n.upper() for n in names]
    if "ALL" in upper or "ALL-LINEAR" in upper:
        targets = "all-linear"
    elif upper in (["DEFAULT"], ["AUTO"]):
        targets = None
    else:
        targets = names
    return LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
                      target_modules=targets, modules_to_save=script.lora_modules_to_save,
                      use_rslora=script.use_rslora, use_dora=script.use_dora, task_type="CAUSAL_LM")


def _quantization_problem(script: ScriptArguments, values: dict) -> str | None:
    """Why the 4-/8-bit flags cannot work here (in words, before any download), or None."""
    flag = "--load_in_4bit" if values.get("load_in_4bit") else "--load_in_8bit" if values.get("load_in_8bit") else None
    if flag is None:
        return None
    if not script.use_peft:
        return f"{flag} freezes the base weights in low precision, so only a LoRA adapter can train; add --use_peft (or --lora / --sft_type lora)."
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if missing:
        return f"{flag} needs {' and '.join(missing)}, which this machine lacks; run there, or drop {flag} to train without quantization."
    return None


def _quantization(script: ScriptArguments, values: dict) -> dict:
    """QLoRA flags -> from_pretrained kwargs ({} without them); `_quantization_problem` must be None."""
    if not (values.get("load_in_4bit") or values.get("load_in_8bit")):
        return {}
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    bnb = BitsAndBytesConfig(
        load_in_4bit=bool(values.get("load_in_4bit")), load_in_8bit=bool(values.get("load_in_8bit")),
        bnb_4bit_quant_type=script.bnb_4bit_quant_type, bnb_4bit_use_double_quant=script.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute,
    )
    return {"quantization_config": bnb, "device_map": {"": PartialState().local_process_index}}
