"""Unpaired preference rows (KTO) -> token ids laid out as pairs.

Row shapes (TRL's unpaired preference format)
---------------------------------------------
- unpaired: ``prompt``, ``completion``, ``label`` (bool: True = desirable), plain strings or
  message lists, with the optional ``system``, ``tools``, ``chat_template_kwargs`` columns of
  every shape (`preftune.data.formats`). ``label`` may also be 0/1.
- paired (any shape `preftune.data.formats` accepts: prompt/chosen/rejected, implicit prompt,
  ...): each pair is split into two unpaired rows, chosen with label True and rejected with label
  False, in TRL 1.16's order (`unpair_preference_dataset`, a batched ``map`` of 1000 rows: the
  1000 chosen rows of a block, then their 1000 rejected rows).

Tokens
------
Each row is tokenized as `preftune.data.tokenize.tokenize_pair` tokenizes a pair (BOS once,
EOS exactly once at the end of the completion, chat templates), which gives TRL 1.16's KTO ids
(``tests/test_trl_parity.py`` checks them). Then, as TRL 1.16's KTOTrainer:

1. rows whose prompt alone is ``max_length`` ids or more are dropped;
2. the KL completion of each row: completions rotated by one inside consecutive blocks of
   ``kl_block`` rows (TRL: ``per_device_train_batch_size``): (x₁,y₁)...(xₙ,yₙ) ->
   (x₁,yₙ), (x₂,y₁), ..., (xₙ,yₙ₋₁); a last, shorter block rotates inside itself;
3. prompt + completion and prompt + KL completion each keep their first ``max_length`` ids.

Layout: the prepared data set has the pair columns ``prompt_ids``, ``chosen_ids`` (the row's
completion) and ``rejected_ids`` (its KL completion), plus ``label``. A row and its KL row share
their prompt, so the pair machinery (one forward over 2B rows, the prompt computed once with
prefix sharing, precomputed reference log-probs per half) serves KTO unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch

from preftune.data.collate import PreferenceCollator
from preftune.data.formats import to_preference_pair
from preftune.data.pairs import PreferencePair
from preftune.data.tokenize import tokenize_pair
from preftune.errors import DataError

logger = logging.getLogger(__name__)

UNPAIRED_COLUMNS = ("completion", "label")
UNPAIR_BLOCK = 1000  # datasets.map's default batch size: the block TRL's unpair_preference_dataset works in


def is_unpaired(columns) -> bool:
    """Whether rows with these columns are unpaired (``completion`` and ``label``)."""
    return all(c in columns for c in UNPAIRED_COLUMNS)


@dataclass(frozen=True)
class UnpairedRow:
    """One unpaired example: a `PreferencePair` whose chosen and rejected are both the completion
    (so pair tokenization applies), and its label."""

    pair: PreferencePair
    desirable: bool


def _label(value: Any, index: int) -> bool:
    if isinstance(value, bool) or (hasattr(value, "dtype") and str(getattr(value, "dtype", "")) == "bool"):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DataError(f"row {index}: field 'label' is {type(value).__name__} {value!r}, not a bool; use True for a "
                    "desirable completion and False for an undesirable one.")


def _placeholder(completion: Any) -> Any:
    """A completion different from `completion` and of its kind, so that the pair check (chosen != rejected)
    passes; it is replaced by the completion itself right after."""
    if isinstance(completion, list):
        return [{"role": "assistant", "content": "\u2063placeholder"}]
    return "\u2063placeholder"


def unpaired_row(row: Mapping, index: int, columns: Mapping[str, str | None] | None = None) -> UnpairedRow:
    """One unpaired row -> `UnpairedRow`, normalised with the paired rules (system, tools, message lists).
    DataError (one sentence naming the row and field) for a row that cannot be used."""
    data = dict(row)
    if columns:
        data = {columns.get(k, k): v for k, v in data.items() if columns.get(k, k) is not None}
    if "prompt" not in data:
        raise DataError(f"row {index}: has no 'prompt' column; unpaired rows need prompt, completion and label.")
    desirable = _label(data.pop("label"), index)
    completion = data.pop("completion")
    paired = {**data, "chosen": completion, "rejected": _placeholder(completion)}
    try:
        pair = to_preference_pair(paired, index)
    except DataError as e:
        raise DataError(str(e).replace("'chosen'", "'completion'")) from None
    return UnpairedRow(replace(pair, rejected=pair.chosen), desirable)


def rows_of(dataset) -> list[Mapping]:
    return [dict(r) for r in dataset] if not isinstance(dataset, list) else list(dataset)


def unpair(pairs: Sequence[PreferencePair], block: int = UNPAIR_BLOCK) -> list[UnpairedRow]:
    """Paired rows -> unpaired rows in TRL 1.16's order: per block of `block` pairs, their chosen
    completions (label True), then their rejected ones (label False)."""
    out = []
    for start in range(0, len(pairs), block):
        chunk = pairs[start:start + block]
        out += [UnpairedRow(replace(p, rejected=p.chosen), True) for p in chunk]
        out += [UnpairedRow(replace(p, chosen=p.rejected), False) for p in chunk]
    return out


def load_unpaired(dataset, columns: Mapping[str, str | None] | None = None, *, skip_bad_rows: bool = False,
                  split: str = "train") -> tuple[list[UnpairedRow], int, list[str], bool]:
    """Rows (unpaired, or paired of any accepted shape) -> (unpaired rows, n input rows, errors of
    skipped rows, whether the rows were paired). Paired rows are split as TRL does, said in one line."""
    rows = rows_of(dataset)
    if not rows:
        raise DataError(f"the {split} set has no rows.")
    names = set(rows[0])
    if columns:
        names = {columns.get(k, k) for k in names}
    paired = not is_unpaired(names)
    out, errors, pairs = [], [], []
    for i, row in enumerate(rows):
        try:
            if paired:
                pairs.append(to_preference_pair(row, i, columns))
            else:
                out.append(unpaired_row(row, i, columns))
        except DataError as e:
            errors.append(str(e))
    if errors and not skip_bad_rows:
        raise DataError(f"{errors[0].rstrip('.')} ({len(errors)} of {len(rows)} rows are bad; fix them, or set "
                        "skip_bad_rows=True / --skip_bad_rows to drop them).")
    if paired:
        out = unpair(pairs)
        logger.warning("%s data: %d paired rows split into %d unpaired rows (each chosen completion labelled desirable, "
                       "each rejected one undesirable), as TRL's KTOTrainer does", split, len(pairs), len(out))
    return out, len(rows), errors, paired


@dataclass(frozen=True)
class UnpairedReport:
    """What preparing an unpaired split did (counts of unpaired rows)."""

    n_rows: int  # input rows (pairs when the data was paired)
    n_unpaired: int  # unpaired rows before length filtering
    n_kept: int
    n_desirable: int
    n_undesirable: int
    n_truncated: int
    n_dropped_long_prompt: int
    n_bad_rows: int = 0
    from_pairs: bool = False
    first_errors: tuple[str, ...] = ()

    # PrepareReport's field names, for code that reads either report
    @property
    def n_dropped_empty_after_truncation(self) -> int:
        return self.n_dropped_long_prompt

    def summary(self) -> str:
        head = (f"{self.n_rows} pairs split into {self.n_unpaired} unpaired rows; " if self.from_pairs else "")
        parts = [f"{self.n_desirable} desirable", f"{self.n_undesirable} undesirable", f"{self.n_truncated} truncated"]
        if self.n_dropped_long_prompt:
            parts.append(f"{self.n_dropped_long_prompt} dropped because the prompt alone fills --max_length (as TRL "
                         "does; raise --max_length)")
        if self.n_bad_rows:
            parts.append(f"{self.n_bad_rows} bad {'row' if self.n_bad_rows == 1 else 'rows'} skipped")
        return f"{head}prepared {self.n_kept} unpaired rows: {', '.join(parts)}"


def kl_rotation(n: int, block: int) -> list[int]:
    """Index of each row's KL completion: rotated by one inside consecutive blocks of `block` rows
    (TRL 1.16: row i of a block gets the completion of row i-1, the first row that of the last)."""
    out = []
    for start in range(0, n, block):
        end = min(start + block, n)
        out += [end - 1] + list(range(start, end - 1))
    return out


def tokenize_unpaired(rows: Sequence[UnpairedRow], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each row, by the pair rules (`tokenize_pair`)."""
    out = []
    for i, row in enumerate(rows):
        tp = tokenize_pair(row.pair, tokenizer, index=i)
        out.append((tp.prompt_ids, tp.chosen_ids))
    return out


def prepare_unpaired(dataset, tokenizer, *, max_length: int | None, kl_block: int,
                     columns: Mapping[str, str | None] | None = None, skip_bad_rows: bool = False,
                     split: str = "train"):
    """Rows -> (datasets.Dataset with prompt_ids, chosen_ids (completion), rejected_ids (KL completion),
    label; `UnpairedReport`). See the module docstring for the rules."""
    import datasets

    rows, n_rows, errors, paired = load_unpaired(dataset, columns, skip_bad_rows=skip_bad_rows, split=split)
    ids = tokenize_unpaired(rows, tokenizer)
    keep = [i for i, (p, _) in enumerate(ids) if max_length is None or len(p) < max_length]
    if not keep:
        raise DataError(f"every {split} row's prompt is --max_length ({max_length}) tokens or longer, so no row is "
                        "left to train on; raise --max_length.")
    prompts = [ids[i][0] for i in keep]
    completions = [ids[i][1] for i in keep]
    labels = [rows[i].desirable for i in keep]
    kl = [completions[j] for j in kl_rotation(len(keep), kl_block)]
    n_truncated = 0
    if max_length is not None:
        rooms = [max_length - len(p) for p in prompts]
        n_truncated = sum(len(c) > r for c, r in zip(completions, rooms))
        completions = [c[:r] for c, r in zip(completions, rooms)]
        kl = [c[:r] for c, r in zip(kl, rooms)]
    n_good = sum(labels)
    report = UnpairedReport(n_rows, len(rows), len(keep), n_good, len(keep) - n_good, n_truncated,
                            len(rows) - len(keep), len(errors), paired, tuple(errors[:3]))
    data = datasets.Dataset.from_dict(
        {"prompt_ids": prompts, "chosen_ids": completions, "rejected_ids": kl, "label": labels})
    return data, report


@dataclass
class UnpairedCollator(PreferenceCollator):
    """`PreferenceCollator` (rows [0, B) prompt + completion, rows [B, 2B) prompt + KL completion),
    plus ``label``: (B,) bool, True for desirable rows."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        batch["label"] = torch.tensor([bool(f["label"]) for f in features], dtype=torch.bool)
        return batch


def inspect_unpaired(dataset, tokenizer, *, max_length: int | None, columns=None) -> dict:
    """`preftune data inspect`'s report for unpaired rows: the desirable/undesirable balance (and the KTO
    paper's weighting rule at weights 1), truncation at `max_length`, bad rows."""
    from preftune.losses import weighting_rule

    rows, n_rows, errors, _ = load_unpaired(dataset, columns, skip_bad_rows=True)
    ids = tokenize_unpaired(rows, tokenizer)
    n_good = sum(r.desirable for r in rows)
    n_bad_label = len(rows) - n_good
    ratio, inside = weighting_rule(n_good, n_bad_label, 1.0, 1.0)
    long_prompt = sum(max_length is not None and len(p) >= max_length for p, _ in ids)
    cut = sum(max_length is not None and len(p) < max_length < len(p) + len(c) for p, c in ids)
    return {
        "rows": n_rows, "shape": "unpaired (prompt, completion, label)", "unpaired_rows": len(rows),
        "desirable": n_good, "undesirable": n_bad_label,
        "desirable_share": n_good / len(rows) if rows else 0.0,
        "kto_weighting": {"ratio_at_weights_1": ratio, "inside_1_to_4/3": inside,
                          "desirable_weight_range": [n_bad_label / max(n_good, 1), 4 / 3 * n_bad_label / max(n_good, 1)]},
        "bad_rows": len(errors), "first_bad_rows": errors[:3], "max_length": max_length,
        "truncated": cut, "dropped_long_prompt": long_prompt,
    }


def format_unpaired(report: dict) -> list[str]:
    """The unpaired report's lines for the text output."""
    w = report["kto_weighting"]
    low, high = w["desirable_weight_range"]
    lines = [f"rows: {report['rows']}  shape: {report['shape']}",
             f"desirable: {report['desirable']}  undesirable: {report['undesirable']}  "
             f"({100 * report['desirable_share']:.1f}% desirable)",
             f"KTO weighting rule (paper eq. 8): λ_D·n_D / (λ_U·n_U) = {w['ratio_at_weights_1']:.3f} at weights 1; "
             + ("inside [1, 4/3]" if w["inside_1_to_4/3"] else
                f"outside [1, 4/3]: use --desirable_weight in [{low:.2f}, {high:.2f}]"),
             f"bad rows: {report['bad_rows']}  truncated at max_length={report['max_length']}: {report['truncated']}  "
             f"dropped (prompt fills max_length): {report['dropped_long_prompt']}"]
    lines += [f"first bad row: {e}" for e in report["first_bad_rows"][:1]]
    return lines
