"""The report behind ``preftune data inspect``: what a data set holds, read before spending GPU hours on it.

The report, for a tokenizer (and its chat template) and length limits: rows read,
columns found and the shape they map to, rows that cannot be used (and how many have
chosen identical to rejected), token-length percentiles of prompt / chosen /
rejected / whole pair, how many pairs the limits would truncate or drop, duplicate
pairs and repeated prompts, and the length bias (how often chosen is longer than
rejected: a model can learn "longer wins" instead of the preference).

It reuses the training pipeline rather than re-implementing it: `sources` loads
the data, `prepare.prepare_dataset` (with no length limits) renders and tokenizes
every pair exactly as training would, and `tokenize.truncate_pair` applies the
limits. `inspect_sources` loads and reports; `inspect_data` reports on data already
loaded. The command (flags, loading the model's tokenizer, the training config's
default limits, the printed tables) is `preftune.cli.inspect`.

List data (several scored answers per prompt, `preftune.data.lists`; a set that mixes list
and pair rows reads as lists) gets its own report (`inspect_lists`, tokenized by
`list_prepare.prepare_lists`): answers per prompt (min/mean/max), the score spread of each
prompt (best score minus worst: stats), ties (the share of prompts where two answers have the
same score), the ordered pairs (answer i scored above answer j: what training on every pair,
``list_pairs="all"``, uses) and the length-vs-score bias over them (the share of ordered
pairs whose better answer has more tokens: 0.5 when length says nothing about the score),
token lengths of prompts, answers and whole lists (prompt + every answer: one packed row),
and what the length limits would cut or drop.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from preftune.data.formats import describe_shape, match_shape
from preftune.data.images import is_vision_processor
from preftune.data.list_prepare import prepare_lists, truncate_list
from preftune.data.lists import is_list_columns, list_shape
from preftune.data.prepare import ID_COLUMNS, IMAGES_COLUMN, image_column, prepare_dataset
from preftune.data.rows import LoadedData, iter_rows
from preftune.data.sources import load_sources
from preftune.data.tokenize import LengthLimits, finished_pair, special_tokens, truncate_pair
from preftune.errors import ConfigError, DataError

__all__ = ["PERCENTILES", "inspect_data", "inspect_lists", "inspect_sources"]

PERCENTILES = (50, 90, 99)
_COMPLETIONS = {"shareai emoji": ("answer_zh", "answer_en"), "query/response": ("response", "rejected_response")}


def _identical(row: Mapping[str, Any], shape_name: str | None) -> bool:
    """Whether the row's two completions are the same value (before any other check)."""
    if shape_name == "messages":
        msgs = row.get("messages")
        last = msgs[-1] if isinstance(msgs, (list, tuple)) and msgs else None
        return isinstance(last, Mapping) and last.get("content") == row.get("rejected_response")
    a, b = _COMPLETIONS.get(shape_name or "", ("chosen", "rejected"))
    return a in row and row.get(a) == row.get(b)


def _stats(values: Sequence[int]) -> dict:
    import numpy as np

    if not len(values):
        return {"mean": 0, **{f"p{q}": 0 for q in PERCENTILES}, "max": 0}
    arr = np.asarray(values)
    out = {"mean": round(float(arr.mean()), 1)}
    out.update({f"p{q}": int(np.percentile(arr, q, method="higher")) for q in PERCENTILES})
    out["max"] = int(arr.max())
    return out


def inspect_sources(
    specs: Sequence[str],
    tokenizer,
    limits: LengthLimits,
    *,
    split: str | None = None,
    config: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    seed: int = 42,
    is_encoder_decoder: bool = False,
) -> dict:
    """Load data set specs as training does (bad rows and broken lines are counted, not fatal; several
    specs are mixed, which checks their rows) and report on them (`inspect_data`)."""
    data = load_sources(list(specs), split, config=config, columns=columns, seed=seed, skip_bad_rows=True,
                        check_rows=len(specs) > 1)
    return inspect_data(data, tokenizer, limits, is_encoder_decoder=is_encoder_decoder)


def inspect_data(data: LoadedData, tokenizer, limits: LengthLimits, *, is_encoder_decoder: bool = False) -> dict:
    """The report on loaded data, as a JSON-serialisable dict (see the module docstring).

    `is_encoder_decoder`: tokenize and truncate as training a T5/BART-style model does (the prompt is the
    encoder input, each completion a decoder target, limited separately)."""
    ds = data.dataset
    names = list(ds.column_names)
    if data.is_lists or is_list_columns(names):
        if is_encoder_decoder:
            raise ConfigError("list rows (several scored answers per prompt) are not supported for encoder-decoder models; "
                              "inspect them with a decoder-only --model.")
        return inspect_lists(data, tokenizer, limits)
    shape = match_shape(names)
    identical = 0
    if shape is not None:
        identical = sum(_identical(row, shape.name) for row in iter_rows(ds))

    report: dict[str, Any] = {
        "sources": [{"name": p.spec.label, "split": p.split, "rows": len(p.dataset)} for p in data.parts],
        "rows": len(ds),
        "columns": names,
        "shape": describe_shape(names),
        "broken_json_lines": sum(p.n_bad_lines for p in data.parts),
        "bad_rows_dropped_while_mixing": sum(p.n_bad_rows for p in data.parts),
        "chosen_equals_rejected": identical,
        "limits": {k: getattr(limits, k) for k in ("max_length", "max_prompt_length", "max_completion_length", "truncation_mode")},
        "is_encoder_decoder": bool(is_encoder_decoder),
        "notes": list(data.notes),
    }
    vision = is_vision_processor(tokenizer)
    found = image_column(ds)
    if found is not None:
        report["image_column"] = found
        if not vision:  # reported, not fatal: the text is measured as a text-only model would see it
            report["notes"].append(f"the data has images (column '{found}'): train it on a vision-language model with "
                                   "its processor (a text-only model refuses it); the lengths below leave the images out "
                                   "(pass a vision-language --model to count their tokens).")
    try:
        prepared, prep = prepare_dataset(ds, tokenizer, LengthLimits(None, None, None, limits.truncation_mode),
                                         skip_bad_rows=True, desc="tokenizing pairs", is_encoder_decoder=is_encoder_decoder,
                                         ignore_images=True)
    except DataError as err:  # no usable pair at all
        report.update(bad_rows=len(ds), first_bad_rows=[str(err)], pairs=0)
        return report
    report["bad_rows"] = prep.n_bad_rows
    report["first_bad_rows"] = list(prep.first_errors)
    report["pairs"] = prep.n_kept

    table = prepared.flatten_indices().data  # (select() leaves an indices mapping over the full table)
    cols = {c: table.column(c).to_pylist() for c in ID_COLUMNS}
    prompts, chosens, rejecteds = cols["prompt_ids"], cols["chosen_ids"], cols["rejected_ids"]
    # a prompt holding image tokens is never cut (`truncate_pair(keep_prompt=True)`), as in training
    has_images = ([not null for null in table.column(IMAGES_COLUMN).is_null().to_pylist()]
                  if vision and IMAGES_COLUMN in table.column_names else [False] * len(prompts))
    specials = special_tokens(tokenizer)
    lengths = {"prompt": [], "chosen": [], "rejected": [], "pair": []}
    truncated = dropped = longer = shorter = 0
    seen_pairs, seen_prompts = set(), set()
    duplicate_pairs = repeated_prompts = 0
    for p, c, r, with_images in zip(prompts, chosens, rejecteds, has_images):
        lengths["prompt"].append(len(p))
        lengths["chosen"].append(len(c))
        lengths["rejected"].append(len(r))
        # the longest row a pair adds: prompt + answer; for an encoder-decoder model, the longer of
        # the encoder input and the decoder target (they are limited separately)
        lengths["pair"].append(max(len(p), len(c), len(r)) if is_encoder_decoder else len(p) + max(len(c), len(r)))
        tp = finished_pair(p, c, r, specials, is_encoder_decoder=is_encoder_decoder)
        cut = truncate_pair(tp, limits, is_encoder_decoder=is_encoder_decoder, keep_prompt=with_images)
        if cut is None:
            dropped += 1
        elif cut is not tp:
            truncated += 1
        longer += len(c) > len(r)
        shorter += len(c) < len(r)
        key = hash((tuple(p), tuple(c), tuple(r)))
        duplicate_pairs += key in seen_pairs
        seen_pairs.add(key)
        pkey = hash(tuple(p))
        repeated_prompts += pkey in seen_prompts
        seen_prompts.add(pkey)
    n = max(prep.n_kept, 1)
    report["tokens"] = {name: _stats(values) for name, values in lengths.items()}
    report["truncated"] = truncated
    report["dropped_by_truncation"] = dropped
    report["duplicate_pairs"] = duplicate_pairs
    report["repeated_prompts"] = repeated_prompts
    report["length_bias"] = {
        "chosen_longer": round(longer / n, 4),
        "rejected_longer": round(shorter / n, 4),
        "same_length": round((prep.n_kept - longer - shorter) / n, 4),
    }
    return report


def _common(data: LoadedData, limits: LengthLimits) -> dict:
    return {
        "sources": [{"name": p.spec.label, "split": p.split, "rows": len(p.dataset)} for p in data.parts],
        "rows": len(data.dataset),
        "columns": list(data.dataset.column_names),
        "broken_json_lines": sum(p.n_bad_lines for p in data.parts),
        "bad_rows_dropped_while_mixing": sum(p.n_bad_rows for p in data.parts),
        "limits": {k: getattr(limits, k) for k in ("max_length", "max_prompt_length", "max_completion_length", "truncation_mode")},
        "is_encoder_decoder": False,
        "notes": list(data.notes),
    }


def inspect_lists(data: LoadedData, tokenizer, limits: LengthLimits) -> dict:
    """The report on loaded list data (see the module docstring), as a JSON-serialisable dict; ``kind`` is "lists"."""
    import numpy as np

    ds = data.dataset
    report = {"kind": "lists", **_common(data, limits),
              "shape": list_shape(ds.column_names) or "lists (rows of several data sets, mixed)"}
    lists = data.pairs if data.is_lists and data.pairs is not None else None
    try:
        prepared, prep = prepare_lists(ds, tokenizer, LengthLimits(None, None, None, limits.truncation_mode),
                                       skip_bad_rows=True, lists=lists, desc="tokenizing lists")
    except DataError as err:  # no usable list at all
        report.update(bad_rows=len(ds), first_bad_rows=[str(err)], lists=0, answers=0)
        return report
    table = prepared.flatten_indices().data
    prompts, answers, scores = (table.column(c).to_pylist() for c in ("prompt_ids", "completion_ids", "scores"))
    sizes = [len(s) for s in scores]
    spreads = [max(s) - min(s) for s in scores]
    ties = sum(len(set(s)) < len(s) for s in scores)
    ordered = longer = shorter = truncated = dropped = repeated = 0
    seen = set()
    lengths = {"prompt": [len(p) for p in prompts], "answer": [len(a) for row in answers for a in row],
               "list": [len(p) + sum(len(a) for a in row) for p, row in zip(prompts, answers)]}
    for p, row, s in zip(prompts, answers, scores):
        for i in range(len(s)):
            for j in range(len(s)):
                if s[i] > s[j]:
                    ordered += 1
                    longer += len(row[i]) > len(row[j])
                    shorter += len(row[i]) < len(row[j])
        cut = truncate_list(p, row, limits, tokenizer)
        if cut is None:
            dropped += 1
        elif cut[0] is not p or any(len(a) != len(b) for a, b in zip(cut[1], row)):
            truncated += 1
        key = hash(tuple(p))
        repeated += key in seen
        seen.add(key)
    n, pairs = max(prep.n_kept, 1), max(ordered, 1)
    report.update({
        "bad_rows": prep.n_bad_rows, "first_bad_rows": list(prep.first_errors), "lists": prep.n_kept,
        "answers": prep.n_answers,
        "answers_per_prompt": {"min": min(sizes), "mean": round(float(np.mean(sizes)), 2), "max": max(sizes)},
        "score_spread": {"min": round(min(spreads), 4), "mean": round(float(np.mean(spreads)), 4),
                         "p50": round(float(np.percentile(spreads, 50, method="higher")), 4), "max": round(max(spreads), 4)},
        "ties": round(ties / n, 4),
        "ordered_pairs": ordered,
        "length_bias": {"better_longer": round(longer / pairs, 4), "better_shorter": round(shorter / pairs, 4),
                        "same_length": round((ordered - longer - shorter) / pairs, 4)},
        "tokens": {name: _stats(values) for name, values in lengths.items()},
        "truncated": truncated,
        "dropped_by_truncation": dropped,
        "repeated_prompts": repeated,
    })
    return report
