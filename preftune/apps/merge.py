"""``preftune merge --adapter DIR --output DIR``: fold a LoRA adapter into its base model.

A LoRA run saves only the adapter; serving it needs the base model plus peft. Merging
adds the low-rank update into the base weights once, so the output is an ordinary
model folder (safetensors, tokenizer with the run's chat template and added tokens,
generation config) that any transformers-based tool loads without peft, and that runs
as fast as the base.

The merge happens on full-precision weights: LoRA trained on a 4- or 8-bit base
(QLoRA) is merged into the base loaded fresh, unquantized, in the requested dtype, since
adding the update to rounded weights would bake the rounding in. A base folder that
itself stores quantized weights cannot be merged into; that is refused with a pointer
to ``--base``. `merge_adapter` is the same thing as a function (used by training's
``--merge`` option); the output is written to a temporary folder first, so a failed
merge leaves no half-written model behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from preftune.files import write_failure
from preftune.errors import ConfigError, UserError

MERGE_RECORD = "preftune_merge.json"


# ---------------------------------------------------------------------- checks


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_adapter(adapter_dir: str) -> None:
    """An existing folder holding adapter_config.json, or a ConfigError saying what it is instead."""
    from preftune.models import is_adapter_folder

    path = os.path.expanduser(adapter_dir)
    if not os.path.isdir(path):
        raise ConfigError(f"--adapter {adapter_dir!r} is not a folder; pass a LoRA run's output_dir.")
    if not is_adapter_folder(path):
        hint = (" it already holds a full model, which needs no merging" if os.path.isfile(os.path.join(path, "config.json"))
                else " pass a LoRA run's output_dir or checkpoint folder")
        raise ConfigError(f"--adapter {adapter_dir!r} holds no adapter_config.json;{hint}.")


def check_output(output_dir: str, adapter_dir: str, base: str, overwrite: bool) -> None:
    """Refuse outputs that would destroy the inputs, or a folder's contents the user did not mean to replace."""
    out = _real(output_dir)
    if _inside(_real(adapter_dir), out):
        raise ConfigError(f"--output {output_dir!r} is (or contains) the adapter folder; write the merged model to a new folder.")
    if os.path.isdir(os.path.expanduser(base)) and _inside(_real(base), out):
        raise ConfigError(f"--output {output_dir!r} is (or contains) the base model folder; write the merged model to a new folder.")
    path = os.path.expanduser(output_dir)
    if os.path.islink(path):
        raise ConfigError(f"--output {output_dir!r} is a symbolic link; pass the folder it points to, or a new folder.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--output {output_dir!r} is a file; pass a folder.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ConfigError(f"--output {output_dir!r} already exists and is not empty; pass --overwrite to replace "
                          f"its contents, or pick a new folder.")


def check_base_not_quantized(base: str) -> None:
    """Refuse a base whose stored weights are quantized: there are no full-precision weights to add LoRA to.

    A base that training merely *loaded* in 4/8 bit (QLoRA) is fine: its config has no
    quantization_config, and it loads here unquantized. A model that is not readable
    (missing, offline) is left for the loading step to report.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return
    quant = getattr(config, "quantization_config", None)
    if quant:
        method = quant.get("quant_method", "quantized") if isinstance(quant, dict) else getattr(quant, "quant_method", "quantized")
        raise ConfigError(f"the base model {base!r} stores {method} weights (quantization_config in its config.json), "
                          f"which a LoRA update cannot be merged into; pass --base pointing at the full-precision model.")


# ---------------------------------------------------------------------- merging


def _sync_special_tokens(model, tokenizer) -> None:
    """Give the merged config the tokenizer's special tokens when the run changed them.

    An adapter folder keeps the base's config, so after setup_chat_format (a new EOS)
    the base's generation config would never stop at the new EOS. Models whose config
    already stops at the tokenizer's EOS are left alone (e.g. lists of stop ids).
    """
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None) if generation is not None else model.config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id in eos_ids:
        return
    for config in (model.config, generation):
        if config is not None:
            config.bos_token_id = tokenizer.bos_token_id
            config.eos_token_id = tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id


def _merged(adapter_dir: str, base: str, dtype):
    """Load the base unquantized (in `dtype`) with the adapter on top, and return (merged model, tokenizer)."""
    from preftune.models import load_trained

    model, tokenizer = load_trained(adapter_dir, base=base, dtype=dtype)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise ConfigError(f"the base model {base!r} loaded quantized; pass --base pointing at the full-precision model.")
    try:
        merged = model.merge_and_unload()
    except AttributeError:  # prompt tuning and other adapters that add no weights to merge
        kind = getattr(next(iter(model.peft_config.values())).peft_type, "value", "non-LoRA")
        raise ConfigError(f"--adapter {adapter_dir!r} is a {kind} adapter, which adds no weights to merge; "
                          f"only LoRA-type adapters can be merged.") from None
    _sync_special_tokens(merged, tokenizer)
    return merged, tokenizer


def _save(model, tokenizer, folder: str, record: dict) -> None:
    model.save_pretrained(folder)  # safetensors; writes generation_config.json too
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, MERGE_RECORD), "w") as f:
        json.dump(record, f, indent=2)


def merge_adapter(adapter_dir: str, output_dir: str, base: str | None = None, dtype=None, overwrite: bool = False) -> str:
    """Merge the LoRA adapter in `adapter_dir` into its base model and save the result in `output_dir`.

    `base` overrides the base named in the adapter's config (e.g. the full-precision
    model behind a pre-quantized one); `dtype` ('auto', 'bf16', 'fp16', 'fp32' or a
    torch.dtype) is the dtype the base loads, merges and is saved in (default: as saved).
    An existing non-empty `output_dir` is replaced only with `overwrite=True`.
    Returns the output folder's absolute path. Raises ConfigError for bad input.
    """
    from preftune.models import adapter_base, resolve_dtype

    check_adapter(adapter_dir)
    base = base or adapter_base(os.path.expanduser(adapter_dir))
    check_output(output_dir, adapter_dir, base, overwrite)
    dtype = resolve_dtype(dtype)
    check_base_not_quantized(base)
    model, tokenizer = _merged(adapter_dir, base, dtype)
    out = os.path.abspath(os.path.expanduser(output_dir))
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.merging-", dir=parent)
    try:
        _save(model, tokenizer, staging, {"adapter": os.path.abspath(os.path.expanduser(adapter_dir)), "base": base,
                                          "dtype": str(model.dtype).replace("torch.", "")})
        if os.path.isdir(out):
            shutil.rmtree(out)  # empty, or --overwrite: checked above
        os.replace(staging, out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        reason = write_failure(err, out) if isinstance(err, Exception) else None
        if reason is not None:  # a full disk: one sentence, and nothing half-written is left
            raise UserError(f"{reason} while writing the merged model to {output_dir}; nothing was left behind, so "
                            "free space and run the merge again.") from err
        raise
    return out


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence through cli.main, no usage dump
        raise ConfigError(f"{message} (see {self.prog} --help).")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="preftune merge", allow_abbrev=False,
                description="Fold a LoRA adapter into its base model and save a standalone model folder.")
    p.add_argument("--adapter", required=True, help="The LoRA run's output folder (holds adapter_config.json).")
    p.add_argument("--output", required=True, help="Where to write the merged model (a new or empty folder).")
    p.add_argument("--base", help="Base model (default: the one in the adapter's config); must be full precision.")
    p.add_argument("--dtype", choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"),
                   help="Dtype to merge and save in (default: as the base is saved).")
    p.add_argument("--overwrite", action="store_true", help="Replace the contents of an existing --output folder.")
    p.add_argument("--safe_serialization", type=_bool, nargs="?", const=True, default=True,
                   help="Accepted for older command lines; the model is always saved as safetensors.")
    return p


def main(argv: list[str]) -> int:
    """``preftune merge --adapter DIR --output DIR [--base B] [--dtype D] [--overwrite]``."""
    args = _parser().parse_args(argv)
    if not args.safe_serialization:
        raise ConfigError("--safe_serialization false is not supported: transformers 5 saves models only as safetensors.")
    print(f"preftune merge: merging {args.adapter} into its base ...", file=sys.stderr, flush=True)
    out = merge_adapter(args.adapter, args.output, base=args.base, dtype=args.dtype, overwrite=args.overwrite)
    print(f"preftune merge: merged model saved to {out}")
    return 0
