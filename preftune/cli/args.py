"""The flags of ``preftune orpo|dpo|cpo|simpo``: their definitions, the ms-swift and TRL aliases, ``--config`` YAML.

One call, `parse_flags(command, argv)`, turns a command line into `Flags`: every
flag's value with the aliases resolved, which flags were given, whether the run
is the demo, and the ``from_pretrained`` keyword arguments the flags ask for.
`preftune.cli.run.parse_run` builds the run (config, model, LoRA) from them.

Every ORPOConfig / DPOConfig / TrainingArguments field is a flag (HfArgumentParser
over `ScriptArguments` and the config class); dict-typed fields take JSON. A
``--config run.yaml`` holds the same keys, turned back into flags that those given
on the command line override. The command lines of ms-swift (``swift orpo ...``)
and of TRL's example scripts run with only the program name changed: their flag
names are accepted as aliases (the ``aliases`` of `ScriptArguments` fields, the
alias rules below, `MODEL_TYPES`). The demo's settings (`DEMO_SETTINGS`,
`DEMO_BETA`) are defaults that any flag given overrides; without ``--output_dir``
a run writes to ``outputs/<command>-tiny-llama`` (demo) or ``outputs/<command>-run``,
or ``-2``, ``-3``, ... when that folder holds a previous run (resuming takes the first).

Decisions, where ms-swift or TRL differ:

- ``--dtype`` (ms-swift; ``--torch_dtype`` in TRL) sets both the dtype the weights
  are loaded in and mixed precision: ``bf16`` loads bf16 weights and trains in bf16;
  ``fp16`` turns on fp16 mixed precision and loads fp16 weights only for LoRA (full
  fine-tuning keeps fp32 master weights, which fp16 mixed precision needs); ``fp32``
  turns mixed precision off; ``AUTO`` is bf16 where the GPU has it, else fp16 mixed
  precision on a GPU, else fp32. A ``--dtype`` that contradicts an explicit
  ``--bf16`` / ``--fp16`` is an error, never silently overridden.
- ``--model_type`` only names a hub id; ``--model`` (``--model_id_or_path``,
  ``--model_name_or_path``) wins when both are given, as in ms-swift.
- ms-swift's defaults (LoRA on, its learning rate, ...) are not copied: only its
  flag names. preftune's defaults are the config's.
- ``--warmup_ratio``, ``--group_by_length``, ``--no_cuda``, ``--evaluation_strategy``
  (gone from transformers 5) are config fields (aliases resolved in `preftune.train.config`).
"""
from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional

from preftune.errors import ConfigError

DEMO_SETTINGS = dict(
    learning_rate=5e-4,
    num_train_epochs=3,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=16,
    eval_strategy="steps",
    eval_steps=25,
    logging_steps=25,
    save_strategy="no",
    warmup_steps=5,
    max_length=256,
)
DEMO_BETA = {"orpo": 0.5, "dpo": 0.5, "cpo": 0.5, "simpo": 2.0, "kto": 0.5}
# A command's own defaults (the config's, otherwise): `preftune simpo` is CPOConfig with ms-swift's SimPO
# settings (β 2.0, γ 1.0) and no NLL term (cpo_alpha 0: SimPO as the paper; ms-swift's 1 is CPO-SimPO).
COMMAND_DEFAULTS = {"simpo": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0)}
_DEFAULT_WHY = {"beta": "ms-swift's SimPO default", "simpo_gamma": "ms-swift's SimPO default",
                "cpo_alpha": "SimPO as in the paper; > 0 is CPO-SimPO", "loss_type": "the SimPO loss"}


# ms-swift --model_type names (the common ones) -> Hugging Face hub ids.
MODEL_TYPES = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-8b-instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3-70b-instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
    "llama3_1-8b": "meta-llama/Llama-3.1-8B",
    "llama3_1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen1half-7b-chat": "Qwen/Qwen1.5-7B-Chat",
    "qwen2-0_5b": "Qwen/Qwen2-0.5B",
    "qwen2-0_5b-instruct": "Qwen/Qwen2-0.5B-Instruct",
    "qwen2-1_5b-instruct": "Qwen/Qwen2-1.5B-Instruct",
    "qwen2-7b": "Qwen/Qwen2-7B",
    "qwen2-7b-instruct": "Qwen/Qwen2-7B-Instruct",
    "qwen2_5-0_5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2_5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.1",
    "mistral-7b-instruct-v2": "mistralai/Mistral-7B-Instruct-v0.2",
    "mistral-7b-instruct-v3": "mistralai/Mistral-7B-Instruct-v0.3",
    "mixtral-moe-7b-instruct": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gemma-2b-instruct": "google/gemma-2b-it",
    "gemma-7b-instruct": "google/gemma-7b-it",
    "gemma2-9b-instruct": "google/gemma-2-9b-it",
    "phi3-mini-4k-instruct": "microsoft/Phi-3-mini-4k-instruct",
    "yi-6b-chat": "01-ai/Yi-6B-Chat",
    "zephyr-7b-beta-chat": "HuggingFaceH4/zephyr-7b-beta",
}


@dataclass
class ScriptArguments:
    """What to train and on what; the aliases of ms-swift and TRL's scripts. Everything else is the training config."""

    config: Optional[str] = field(default=None, metadata={"help": "YAML file of flag values (keys are flag names); flags given on the command line win."})
    # ---- model
    model: Optional[str] = field(default=None, metadata={
        "aliases": ["--model_name_or_path", "--model_id_or_path"],
        "help": "Model hub id or local folder (TRL: --model_name_or_path, ms-swift: --model_id_or_path). Default: the bundled tiny model (demo)."})
    model_type: Optional[str] = field(default=None, metadata={"help": "ms-swift model name, e.g. llama3-8b-instruct, qwen2-0_5b-instruct, mistral-7b-instruct-v2 (resolved to a hub id; --model wins)."})
    dtype: Optional[str] = field(default=None, metadata={
        "aliases": ["--torch_dtype"], "help": "AUTO, bf16, fp16 or fp32: weights' dtype and mixed precision (see the README)."})
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "Attention implementation passed to from_pretrained (e.g. sdpa, eager, flash_attention_2)."})
    device_map: Optional[str] = field(default=None, metadata={"help": "One process, the model split across its GPUs (ms-swift's MP mode): auto, balanced or sequential (passed to from_pretrained)."})
    check_model_is_latest: Optional[bool] = field(default=None, metadata={"help": "Accepted for ms-swift command lines; preftune never checks for newer model versions."})
    # ---- LoRA / QLoRA
    sft_type: Optional[Literal["lora", "full"]] = field(default=None, metadata={"aliases": ["--train_type", "--tuner_type"], "help": "ms-swift: lora (= --use_peft) or full (ms-swift 3: --train_type, 4: --tuner_type)."})
    use_peft: bool = field(default=False, metadata={"aliases": ["--lora"], "help": "Train a LoRA adapter instead of all weights (also --lora)."})
    lora_r: int = field(default=16, metadata={"aliases": ["--lora_rank"], "help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"aliases": ["--lora_dropout_p"], "help": "LoRA dropout."})
    lora_target_modules: Optional[list[str]] = field(default=None, metadata={"aliases": ["--target_modules"], "help": "Module names (space- or comma-separated), ALL for every linear layer, DEFAULT for peft's choice per architecture. Default: ALL."})
    lora_modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. lm_head embed_tokens)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling (alpha / sqrt(r))."})
    use_dora: bool = field(default=False, metadata={"help": "DoRA: weight-decomposed LoRA."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base weights in 4 bits (bitsandbytes, CUDA GPU); needs --use_peft."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base weights in 8 bits (bitsandbytes, CUDA GPU); needs --use_peft."})
    quantization_bit: Optional[int] = field(default=None, metadata={"help": "ms-swift: 4 or 8 (= --load_in_4bit / --load_in_8bit)."})
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA's) or fp4."})
    use_bnb_nested_quant: bool = field(default=False, metadata={"aliases": ["--bnb_4bit_use_double_quant"], "help": "Double quantization: quantize the 4-bit scales too."})
    # ---- data
    dataset: Optional[list[str]] = field(default=None, metadata={
        "aliases": ["--dataset_name"],
        "help": "Preference data, one or more (space- or comma-separated, mixed): hub id (NAME:CONFIG, NAME@SPLIT), local .json/.jsonl/.csv/.parquet "
                "file or folder, or a registry name (preftune data list); NAME#N samples N rows. Default: the bundled tiny-prefs set (demo)."})
    dataset_config: Optional[str] = field(default=None, metadata={"aliases": ["--dataset_config_name"], "help": "Hub config of the data set(s) (TRL: --dataset_config)."})
    dataset_split: Optional[str] = field(default=None, metadata={"aliases": ["--dataset_train_split"], "help": "Split used for training (default: train, or the registry's train split)."})
    eval_split: Optional[str] = field(default=None, metadata={"aliases": ["--dataset_test_split"], "help": "Split used for evaluation (default: the data's test split when it has one)."})
    eval_dataset: Optional[list[str]] = field(default=None, metadata={"aliases": ["--val_dataset"], "help": "Separate evaluation data, same forms as --dataset (mixed into one set); or several named sets, NAME=SPEC each (e.g. --eval_dataset helpful=a.jsonl safe=b.jsonl), evaluated one by one and logged as eval_NAME_loss, ... (a NAME given twice mixes its specs)."})
    split_dataset_ratio: Optional[float] = field(default=None, metadata={"aliases": ["--dataset_test_ratio"], "help": "Hold out this fraction of the training rows (seeded) as the evaluation set."})
    columns: Optional[str] = field(default=None, metadata={"help": "Rename columns to the ones preftune reads: JSON '{\"q\": \"prompt\"}' or q=prompt,good=chosen (empty target drops a column)."})
    # ---- ms-swift names of training flags
    batch_size: Optional[int] = field(default=None, metadata={"help": "ms-swift: = --per_device_train_batch_size."})
    eval_batch_size: Optional[int] = field(default=None, metadata={"help": "ms-swift: = --per_device_eval_batch_size."})
    # ---- after training
    merge: bool = field(default=False, metadata={"aliases": ["--merge_lora"], "help": "With LoRA: fold the trained adapter into its base at the end and save the merged model (see --merge_output)."})
    merge_output: Optional[str] = field(default=None, metadata={"help": "Folder of the merged model (default: OUTPUT_DIR-merged)."})


def config_class(command: str):
    """The training config class of a command: ORPOConfig for orpo, DPOConfig for dpo, CPOConfig for cpo and simpo."""
    from preftune.train.config import ORPOConfig
    from preftune.train.dpo_config import DPOConfig
    from preftune.train.cpo_config import CPOConfig
    from preftune.train.kto_config import KTOConfig

    return {"orpo": ORPOConfig, "dpo": DPOConfig, "cpo": CPOConfig, "simpo": CPOConfig, "kto": KTOConfig}[command]


@dataclass(frozen=True)
class Flags:
    """One command line, parsed: what `parse_flags` returns."""

    command: str
    values: dict[str, Any]  # every flag's destination -> value (ScriptArguments and config fields), aliases resolved
    given: frozenset[str]  # destinations set on the command line or in the --config file (not left at a default)
    demo: bool  # neither --model, --model_type nor --dataset given: the demo's defaults apply
    model_kwargs: dict[str, Any]  # from_pretrained kwargs the flags ask for (dtype, attn_implementation, ...)

    @property
    def script(self) -> ScriptArguments:
        return ScriptArguments(**{f.name: self.values[f.name] for f in fields(ScriptArguments)})

    def config_values(self) -> dict[str, Any]:
        """The config class's constructor arguments, as the flags give them."""
        return {f.name: self.values[f.name] for f in fields(config_class(self.command)) if f.init}


def parse_flags(command: str, argv: list[str]) -> Flags:
    """``preftune COMMAND ARGV`` -> `Flags` (``--config`` YAML read, defaults set, aliases resolved).

    Raises ConfigError (one sentence) for an unknown flag, a bad value, a bad YAML
    file, or aliases that disagree."""
    from preftune.train.config import LEGACY_ALIASES

    parser = _make_parser(command)
    argv = _expand_config(list(argv), parser)
    given = _given(argv, parser)
    demo = not given & {"model", "model_type", "dataset"}
    if demo:  # the demo's defaults, except for a field the user set through an older name of it
        aliased = {target for name, target in LEGACY_ALIASES.items() if name in given}
        parser.set_defaults(**{k: v for k, v in DEMO_SETTINGS.items() if k not in aliased}, beta=DEMO_BETA[command])
    if "output_dir" not in given:
        argv += ["--output_dir", _default_output_dir(command, demo, "resume_from_checkpoint" in given)]
    values = vars(parser.parse_args(argv))
    for action in parser._actions:  # argparse reads `--save_steps=--` as an empty list
        if action.nargs is None and values.get(action.dest) == []:
            raise ConfigError(f"{action.option_strings[0]} needs a value.")
    model_kwargs = _resolve_aliases(values, given)
    return Flags(command, values, frozenset(given), demo, model_kwargs)


_SET_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"


def named_eval_sets(values) -> dict[str, list[str]] | None:
    """``--eval_dataset NAME=SPEC ...`` -> {NAME: [SPEC, ...]} (in order given; a name given twice mixes its specs);
    None when no value is named (the specs make one evaluation set, as --dataset's do)."""
    import re

    from preftune.data.files import is_local_name
    from preftune.data.specs import split_specs

    items = split_specs(values)
    named = [re.fullmatch(f"({_SET_NAME})=(.+)", item) if not is_local_name(item) else None for item in items]
    if not any(named):
        return None
    if not all(named):
        plain = items[named.index(None)]
        raise ConfigError(f"--eval_dataset mixes named sets (NAME=SPEC) with {plain!r}, which has no name; name every "
                          "set or none.")
    sets: dict[str, list[str]] = {}
    for match in named:
        sets.setdefault(match.group(1), []).append(match.group(2).strip())
    return sets


def model_name(script: ScriptArguments) -> str:
    """The model to train: --model, else the hub id of --model_type, else the bundled tiny model."""
    from preftune.assets import tiny_model_path

    if script.model:
        return script.model
    if script.model_type:
        hub_id = MODEL_TYPES.get(script.model_type) or MODEL_TYPES.get(script.model_type.lower())
        if hub_id is None:
            near = difflib.get_close_matches(script.model_type.lower(), list(MODEL_TYPES), n=3, cutoff=0.5) or list(MODEL_TYPES)[3:7]
            raise ConfigError(f"--model_type {script.model_type!r} is not in preftune's table (e.g. {', '.join(near)}); pass the hub id or a local folder with --model instead.")
        return hub_id
    return tiny_model_path()


# ----------------------------------------------------------------------- parsing


def _json_object(text: str):
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err.msg}); write an object such as '{{\"dtype\": \"bfloat16\"}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object")
    return value


def _make_parser(command: str):
    from transformers import HfArgumentParser

    from preftune.train.config import MISNAMED_FIELDS

    class Parser(HfArgumentParser):
        def error(self, message):  # one sentence, no usage dump, no SystemExit
            if message.startswith("unrecognized arguments"):
                unknown = [a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("-")]
                misnamed = [u for u in unknown if u.lstrip("-") in MISNAMED_FIELDS]
                if misnamed:  # a tutorial's name for a field preftune (and TRL) calls otherwise
                    why = MISNAMED_FIELDS[misnamed[0].lstrip("-")]
                    raise ConfigError(f"unknown flag {' '.join(misnamed)}: {why}; use --beta and drop "
                                      f"{' and '.join(misnamed)}.")
                near = difflib.get_close_matches(unknown[0], list(self._option_string_actions), n=1) if unknown else []
                hint = f"; did you mean {near[0]}?" if near else f"; see preftune {command} --help."
                raise ConfigError(f"unknown flag {' '.join(unknown) or message.split(':', 1)[1].strip()}{hint}")
            raise ConfigError(f"{message}.")

    parser = Parser((ScriptArguments, config_class(command)), prog=f"preftune {command}", allow_abbrev=False)
    for action in parser._actions:  # dict-typed config fields take JSON on the command line
        if getattr(action.type, "__origin__", action.type) is dict:
            action.type = _json_object
        if action.dest in COMMAND_DEFAULTS.get(command, {}):
            action.help = (f"{action.help} preftune {command}: {COMMAND_DEFAULTS[command][action.dest]}, "
                           f"{_DEFAULT_WHY[action.dest]}.")
    parser.set_defaults(**COMMAND_DEFAULTS.get(command, {}))
    return parser


def _expand_config(argv: list[str], parser) -> list[str]:
    """argv with ``--config FILE`` replaced by the file's flags, put first so that the command line wins."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    return _yaml_argv(known.config, parser) + rest


def _yaml_argv(path: str, parser) -> list[str]:
    import json

    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save the YAML file as UTF-8.") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of flag names to values, e.g. 'learning_rate: 1.0e-5'.")
    argv: list[str] = []
    for key, value in values.items():
        option = f"--{key}"
        action = parser._option_string_actions.get(option)
        if action is None or key == "config":
            near = difflib.get_close_matches(option, list(parser._option_string_actions), n=1)
            hint = f"; did you mean {near[0][2:]}?" if near else "; keys are flag names (preftune orpo --help)."
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        if value is None:
            continue
        if action.nargs == 0:  # store_true / store_false flags
            argv += [option] if value else []
        elif isinstance(value, (list, tuple)):
            if action.nargs not in ("+", "*"):
                raise ConfigError(f"{path}: key {key!r} takes one value, not a list.")
            argv += [option, *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [option, json.dumps(value)]
        else:
            argv += [option, str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _given(argv: list[str], parser) -> set[str]:
    """Destinations of the flags that appear in `argv` (explicitly set)."""
    dests = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                dests.add(action.dest)
    return dests


def _default_output_dir(command: str, demo: bool, resuming: bool) -> str:
    """outputs/orpo-tiny-llama, or -2, -3, ... when that holds a previous run (resuming takes the first)."""
    base = os.path.join("outputs", f"{command}-{'tiny-llama' if demo else 'run'}")
    if resuming:
        return base
    path, n = base, 1
    while os.path.isdir(path) and os.listdir(path):
        n += 1
        path = f"{base}-{n}"
    return path


# ----------------------------------------------------------------------- aliases


def _take(values: dict, given: set, alias: str, target: str) -> None:
    """An alias flag sets its target, unless the target was also given with another value (an error)."""
    value = values.get(alias)
    if value is None:
        return
    if target in given and values[target] != value:
        raise ConfigError(f"--{alias} {values[alias]} and --{target} {values[target]} disagree; pass only one of them.")
    values[target] = value


def _resolve_aliases(values: dict, given: set) -> dict:
    """ms-swift / TRL flag names -> config values (in place); returns from_pretrained kwargs."""
    _take(values, given, "batch_size", "per_device_train_batch_size")
    _take(values, given, "eval_batch_size", "per_device_eval_batch_size")
    if values.get("sft_type") is not None:
        lora = values["sft_type"] == "lora"
        if "use_peft" in given and bool(values["use_peft"]) != lora:
            raise ConfigError(f"--sft_type {values['sft_type']} and --use_peft {values['use_peft']} disagree; pass only one of them.")
        values["use_peft"] = lora
    bits = values.get("quantization_bit")
    if bits is not None:
        if bits not in (4, 8):
            raise ConfigError(f"--quantization_bit={bits} is not supported; use 4 (QLoRA) or 8.")
        values["load_in_4bit" if bits == 4 else "load_in_8bit"] = True
    if values.get("load_in_4bit") and values.get("load_in_8bit"):
        raise ConfigError("--load_in_4bit and --load_in_8bit exclude each other; pick one.")
    kwargs = {}
    if values.get("attn_implementation"):
        kwargs["attn_implementation"] = values["attn_implementation"]
    if values.get("trust_remote_code"):
        kwargs["trust_remote_code"] = True
    if values.get("device_map"):
        if values["device_map"] not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise ConfigError(f"--device_map {values['device_map']!r} is not known; use auto, balanced or sequential.")
        kwargs["device_map"] = values["device_map"]
    dtype = values.get("dtype")
    if dtype is not None:
        kwargs.update(_resolve_dtype(dtype, values, given))
    return kwargs


_DTYPE_NAMES = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
                "fp32": "fp32", "float32": "fp32", "float": "fp32"}


def _resolve_dtype(dtype: str, values: dict, given: set) -> dict:
    import torch

    name = _DTYPE_NAMES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"--dtype={dtype!r} is not known; use AUTO, bf16, fp16 or fp32.")
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            name = "bf16"
        elif torch.cuda.is_available():
            name = "fp16"
        else:
            name = "fp32"
    want = {"bf16": (True, False), "fp16": (False, True), "fp32": (False, False)}[name]
    for flag, value in zip(("bf16", "fp16"), want):
        if flag in given and bool(values[flag]) != value:
            raise ConfigError(f"--dtype {dtype} and --{flag} {values[flag]} disagree; pass only one of them.")
        values[flag] = value
    if name == "bf16":
        return {"dtype": "bfloat16"}
    if name == "fp16":  # fp16 mixed precision needs fp32 master weights, except under LoRA
        return {"dtype": "float16" if values.get("use_peft") else "float32"}
    return {"dtype": "float32"}

