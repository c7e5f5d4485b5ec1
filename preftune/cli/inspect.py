"""``preftune data inspect DATASET`` and ``preftune data list``: the command line of the data report.

The report itself is `preftune.data.inspect` (a function of the data, a tokenizer
and length limits); this module reads the flags, loads the model's tokenizer
(default: the bundled tiny model) and reads from its config.json whether it is an
encoder-decoder model, takes the length limits the flags leave unset from the
training config's defaults (``none``: no limit), and prints the report as tables or
JSON. ``preftune data list`` prints the registry (`preftune.data.registry`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Mapping, Sequence

from preftune.data.inspect import PERCENTILES, inspect_sources
from preftune.data.specs import parse_columns, split_specs
from preftune.data.tokenize import LengthLimits
from preftune.errors import ConfigError

__all__ = ["NO_LIMIT", "data_main", "format_report", "inspect_dataset"]

NO_LIMIT = "none"  # a length limit given as "none" on the command line: no limit (None: the default)


def _default_limits() -> dict:
    from dataclasses import fields

    from preftune.train.config import PreferenceConfig

    names = ("max_length", "max_prompt_length", "max_completion_length", "truncation_mode")
    return {f.name: f.default for f in fields(PreferenceConfig) if f.name in names}


def _config_is_encoder_decoder(model: str) -> bool:
    """Whether a model id/path's config.json says is_encoder_decoder (the config only, no weights)."""
    from preftune.models import check_model_config

    return bool(getattr(check_model_config(model), "is_encoder_decoder", False))


def inspect_dataset(
    dataset: str | Sequence[str],
    *,
    model: str | None = None,
    tokenizer=None,
    split: str | None = None,
    config: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    truncation_mode: str | None = None,
    seed: int = 42,
    use_defaults: bool = True,
    is_encoder_decoder: bool | None = None,
) -> dict:
    """The report as a JSON-serialisable dict (`preftune.data.inspect`), for `model`'s tokenizer
    (or `tokenizer`; default: the bundled tiny model).

    Length limits left as None take the training config's defaults (unless
    ``use_defaults=False``); `NO_LIMIT` means no limit. `is_encoder_decoder` (default: read
    from `model`'s config.json): tokenize and truncate as training a T5/BART-style model does —
    the prompt is the encoder input, each completion a decoder target, limited separately.
    """
    defaults = _default_limits() if use_defaults else {}

    def pick(name: str, value):
        return None if value == NO_LIMIT else defaults.get(name) if value is None else value

    limits = LengthLimits(pick("max_length", max_length), pick("max_prompt_length", max_prompt_length),
                          pick("max_completion_length", max_completion_length),
                          truncation_mode or defaults.get("truncation_mode") or "keep_start")
    if tokenizer is None:
        from preftune.assets import tiny_model_path
        from preftune.models import check_model_config, load_processor, load_tokenizer

        model = model or tiny_model_path()
        vlm = getattr(check_model_config(model), "vision_config", None) is not None  # its processor counts image tokens
        tokenizer = load_processor(model) if vlm else load_tokenizer(model)
    if is_encoder_decoder is None:
        is_encoder_decoder = model is not None and _config_is_encoder_decoder(model)
    specs = split_specs(dataset)
    unpaired = _unpaired_report(specs, tokenizer, limits.max_length, split=split, config=config, columns=columns,
                                seed=seed)
    if unpaired is not None:  # KTO's rows: prompt, completion, label
        return {"dataset": specs, "model": model or getattr(tokenizer, "name_or_path", None), **unpaired}
    report = inspect_sources(specs, tokenizer, limits, split=split, config=config, columns=columns, seed=seed,
                             is_encoder_decoder=is_encoder_decoder)
    return {"dataset": specs, "model": model or getattr(tokenizer, "name_or_path", None), **report}


def _unpaired_report(specs, tokenizer, max_length, **load) -> dict | None:
    """The unpaired rows' report (`preftune.data.unpaired.inspect_unpaired`), or None when the rows are pairs."""
    from preftune.data.sources import load_sources
    from preftune.data.unpaired import inspect_unpaired, is_unpaired

    loaded = load_sources(specs, load.pop("split"), check_rows=False, **load)
    names = set(loaded.dataset.column_names)
    if load.get("columns"):
        names = {load["columns"].get(n, n) for n in names}
    if not is_unpaired(names):
        return None
    return inspect_unpaired(loaded.dataset, tokenizer, max_length=max_length, columns=load.get("columns"))


def _pct(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)" if total else str(count)


def format_report(report: dict) -> str:
    """The report as a readable text block."""
    from preftune.cli.console import format_table

    total = report["rows"]
    lines = [f"data set: {', '.join(report['dataset'])}  (tokenizer: {report['model']})"]
    if report.get("shape", "").startswith("unpaired"):
        from preftune.data.unpaired import format_unpaired

        return "\n".join(lines + format_unpaired(report))
    if len(report["sources"]) > 1 or report["sources"][0]["split"]:
        lines += [f"  {s['name']} [{s['split']}]: {s['rows']} rows" for s in report["sources"]]
    lines += [f"rows: {total}", f"columns: {', '.join(report['columns'])}", f"shape: {report['shape']}"]
    lines += [f"note: {n}" for n in report["notes"]]
    if report.get("kind") == "lists":
        return "\n".join(lines + _format_lists(report))
    checks = [
        ["usable pairs", _pct(report.get("pairs", 0), total)],
        ["bad rows (not usable)", _pct(report.get("bad_rows", 0), total)],
        ["  of which chosen == rejected", report["chosen_equals_rejected"]],
    ]
    if report["broken_json_lines"]:
        checks.append(["broken JSON lines (not read)", report["broken_json_lines"]])
    if report["bad_rows_dropped_while_mixing"]:
        checks.append(["bad rows dropped while mixing", report["bad_rows_dropped_while_mixing"]])
    if "tokens" not in report:
        lines += ["", format_table(["check", "count"], checks)]
        lines += [f"first bad row: {e}" for e in report.get("first_bad_rows", [])[:1]]
        return "\n".join(lines)
    pairs = report["pairs"]
    limits = report["limits"]
    limit_text = ", ".join(f"{k}={v}" for k, v in limits.items())
    bias = report["length_bias"]
    checks += [
        ["duplicate pairs", report["duplicate_pairs"]],
        ["repeated prompts", report["repeated_prompts"]],
        ["truncated by the limits", _pct(report["truncated"], pairs)],
        ["dropped by truncation (empty completion)", _pct(report["dropped_by_truncation"], pairs)],
        ["chosen longer than rejected", f"{100 * bias['chosen_longer']:.1f}%"],
        ["rejected longer than chosen", f"{100 * bias['rejected_longer']:.1f}%"],
    ]
    heads = ["tokens", "mean", *(f"p{q}" for q in PERCENTILES), "max"]
    rows = [[name, *(s[h] for h in heads[1:])] for name, s in report["tokens"].items()]
    enc_dec = report.get("is_encoder_decoder")
    rows[-1][0] = "pair (longest of encoder and decoder)" if enc_dec else "pair (prompt + longer completion)"
    if enc_dec:
        limit_text += " (encoder-decoder: prompt and completions limited separately)"
    lines += ["", format_table(heads, rows), "", f"limits: {limit_text}", format_table(["check", "count"], checks)]
    lines += [f"first bad row: {e}" for e in report.get("first_bad_rows", [])[:1]]
    return "\n".join(lines)


def _format_lists(report: dict) -> list[str]:
    """The list report's lines (`preftune.data.inspect.inspect_lists`)."""
    from preftune.cli.console import format_table

    total = report["rows"]
    checks = [["usable lists", _pct(report.get("lists", 0), total)], ["answers", report.get("answers", 0)],
              ["bad rows (not usable)", _pct(report.get("bad_rows", 0), total)]]
    if report["broken_json_lines"]:
        checks.append(["broken JSON lines (not read)", report["broken_json_lines"]])
    if report["bad_rows_dropped_while_mixing"]:
        checks.append(["bad rows dropped while mixing", report["bad_rows_dropped_while_mixing"]])
    if "tokens" not in report:
        return ["", format_table(["check", "count"], checks)] + [f"first bad row: {e}" for e in report["first_bad_rows"][:1]]
    lists, per, spread, bias = report["lists"], report["answers_per_prompt"], report["score_spread"], report["length_bias"]
    checks += [
        ["answers per prompt (min / mean / max)", f"{per['min']} / {per['mean']} / {per['max']}"],
        ["score spread, best - worst (min / mean / max)", f"{spread['min']:g} / {spread['mean']:g} / {spread['max']:g}"],
        ["prompts with a tie", f"{100 * report['ties']:.1f}%"],
        ["ordered pairs (better, worse)", report["ordered_pairs"]],
        ["better answer longer (0.5 = no length bias)", f"{100 * bias['better_longer']:.1f}%"],
        ["better answer shorter", f"{100 * bias['better_shorter']:.1f}%"],
        ["repeated prompts", report["repeated_prompts"]],
        ["truncated by the limits", _pct(report["truncated"], lists)],
        ["dropped by truncation", _pct(report["dropped_by_truncation"], lists)],
    ]
    heads = ["tokens", "mean", *(f"p{q}" for q in PERCENTILES), "max"]
    rows = [[name, *(s[h] for h in heads[1:])] for name, s in report["tokens"].items()]
    rows[-1][0] = "list (prompt + every answer)"
    limit_text = ", ".join(f"{k}={v}" for k, v in report["limits"].items())
    return (["", format_table(heads, rows), "", f"limits: {limit_text}", format_table(["check", "count"], checks)]
            + [f"first bad row: {e}" for e in report["first_bad_rows"][:1]])


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help).")


def _limit(text: str):
    if text.lower() in ("none", "null", "0"):
        return NO_LIMIT
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (or none)")
    return int(text)


def _inspect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="preftune data inspect", description="Report on a preference data set before training.", allow_abbrev=False)
    p.add_argument("dataset", nargs="+", help="Data set(s), as for --dataset: hub id, local file or folder, registry name; NAME#N samples N rows.")
    p.add_argument("--model", help="Tokenizer and chat template to measure with (default: the bundled tiny model).")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    p.add_argument("--split", "--dataset_split", dest="split", help="Split to read (default: train, or the registry's train split).")
    p.add_argument("--dataset_config", "--config", dest="config", help="Hub config of the data set.")
    p.add_argument("--columns", help="Rename columns, as for training: '{\"q\": \"prompt\"}' or q=prompt,good=chosen.")
    p.add_argument("--max_length", type=_limit, help="Limit to check against (default: the training default; none: no limit).")
    p.add_argument("--max_prompt_length", type=_limit, help="Limit to check against (default: the training default).")
    p.add_argument("--max_completion_length", type=_limit, help="Limit to check against (default: none).")
    p.add_argument("--truncation_mode", choices=("keep_end", "keep_start"), help="Which tokens of a long pair are kept (default: keep_start, as in training).")
    p.add_argument("--seed", type=int, default=42, help="Seed for NAME#N sampling.")
    return p


def _list(argv: list[str]) -> int:
    from preftune.cli.console import format_table
    from preftune.data.registry import REGISTRY

    p = _Parser(prog="preftune data list", description="The registry of well-known preference data sets.", allow_abbrev=False)
    p.add_argument("--json", action="store_true", help="Print the registry as JSON.")
    args = p.parse_args(argv)
    entries = list(REGISTRY.values())
    if args.json:
        print(json.dumps([{"name": e.name, "hub_id": e.hub_id, "train_split": e.train_split, "test_split": e.test_split,
                           "columns": list(e.raw_columns), "description": e.description} for e in entries], indent=2))
        return 0
    rows = [[e.name, e.hub_id, e.train_split + (f" / {e.test_split}" if e.test_split else ""), e.description] for e in entries]
    print(format_table(["name", "hub id", "splits", "what"], rows, indent=""))
    return 0


def data_main(argv: list[str]) -> int:
    """``preftune data inspect ...`` / ``preftune data list``."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: preftune data inspect DATASET [--model M] [--json] [--max_length N] ...\n"
              "       preftune data list [--json]")
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    if sub == "list":
        return _list(rest)
    if sub != "inspect":
        raise ConfigError(f"unknown data command {sub!r}; use 'preftune data inspect DATASET' or 'preftune data list'.")
    args = _inspect_parser().parse_args(rest)
    report = inspect_dataset(
        args.dataset, model=args.model, split=args.split, config=args.config, columns=parse_columns(args.columns),
        max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        max_completion_length=args.max_completion_length, truncation_mode=args.truncation_mode, seed=args.seed,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    sys.stdout.flush()
    return 0
