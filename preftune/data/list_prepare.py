"""List rows -> token ids: `prepare_lists`, with a report of what was cut, dropped or bad.

Per row: `preftune.data.lists.to_scored_list` -> each answer rendered and tokenized EXACTLY as a pair's chosen
would be (`preftune.data.tokenize`: the chat template with the row's tools and keywords, one batched tokenizer
call, BOS once at the start of the prompt, EOS exactly once at the end of each answer) -> truncation. A pair row
prepared as a list gives the pair's ids: ``prompt_ids`` = its prompt_ids, ``completion_ids`` = [chosen_ids,
rejected_ids], under every limit.

The result is a datasets.Dataset with the columns ``prompt_ids`` (list[int]), ``completion_ids``
(list[list[int]]: the N answers in the row's order) and ``scores`` (list[float], higher is better; ranking rows
N-1, ..., 0).

Truncation: one prompt per list (prefix sharing runs it once before all the answers), so the pair rules
(`tokenize.truncate_ids`) apply with "the longer completion" read as the longest answer of the list:

- ``max_completion_length`` first cuts each answer to its first N ids;
- ``keep_start`` (default, TRL 1.16): if the prompt and the longest answer fit in ``max_length`` nothing is cut;
  otherwise each answer keeps its first ``max_length - len(prompt)`` ids, as each pair's chosen would; a prompt
  of ``max_length`` ids or more drops the row (``n_dropped_long_prompt``);
- ``keep_end``: the prompt keeps its last ``max_length - len(longest answer)`` ids, as it would in a pair of the
  longest answer and any other: the longest answer's sequence is TRL's, shorter answers get the same (shorter)
  prompt; a row whose longest answer alone fills ``max_length`` is dropped (``n_dropped_long_completion``);
- ``max_prompt_length`` set (older TRL rules): if the prompt and the longest answer exceed ``max_length``, the
  prompt is cut to ``max_prompt_length`` ids, then each answer keeps its first ``max_length - len(prompt)``;
- a row left with an empty answer is dropped, never trained (counted).

Answers that become identical after truncation keep their scores (they were different answers; the cut changed
what is trained, not the data's preference): such a pair then gives the same reward to both, so it adds a
constant to a pairwise loss and no gradient.

Bad rows raise one DataError naming the first of them and how many there are, or are dropped and counted with
``skip_bad_rows``, as `preftune.data.prepare.prepare_dataset` does. Data with images is refused (ConfigError):
list rows do not support images. Encoder-decoder models are not supported for list rows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from preftune.data.formats import check_columns
from preftune.data.lists import ScoredList, pair_as_list, to_scored_list
from preftune.data.pairs import PreferencePair
from preftune.data.prepare import PrepareReport, image_column, tokenizer_hash
from preftune.data.tokenize import (
    COMPLETION_FILLS_MAX_LENGTH,
    PROMPT_FILLS_MAX_LENGTH,
    LengthLimits,
    finish_ids,
    ids_drop_reason,
    render_conversation,
    special_tokens,
    text_tokenizer,
    truncate_ids,
)
from preftune.errors import ConfigError, DataError

__all__ = ["LIST_ID_COLUMNS", "ListReport", "prepare_lists", "tokenize_list", "truncate_list"]

LIST_ID_COLUMNS = ("prompt_ids", "completion_ids", "scores")
_STATUS, _ERROR = "_preftune_status", "_preftune_error"
KEPT, TRUNCATED, DROPPED_EMPTY, BAD, DROPPED_PROMPT, DROPPED_COMPLETION = 0, 1, 2, 3, 4, 5
_DROPPED = {PROMPT_FILLS_MAX_LENGTH: DROPPED_PROMPT, COMPLETION_FILLS_MAX_LENGTH: DROPPED_COMPLETION}
_N_ERRORS = 5
_CHUNK = 1000


@dataclass(frozen=True)
class ListReport(PrepareReport):
    """What `prepare_lists` did, counted in lists (rows); `n_answers` counts the answers of the kept lists.
    The other fields, and the summary, are `PrepareReport`'s."""

    n_answers: int = 0
    _unit, _answer, _as_trl = "lists", "answer", "as TRL does for pairs"

    def _head(self) -> str:
        return f"{super()._head()} ({self.n_answers} answers)"


def _texts(item: ScoredList, tokenizer, index: int | None) -> list[str]:
    """The prompt's text, then each answer's: a pair's `render_pair` rules for N answers."""
    if not item.is_conversational:
        return [item.prompt, *item.completions]
    prompt_text, texts = render_conversation(item.prompt, [(f"answer {i}", a) for i, a in enumerate(item.completions)],
                                             item.chat_template_kwargs(), tokenizer, index=index)
    return [prompt_text, *texts]


def tokenize_list(item: ScoredList, tokenizer, *, index: int | None = None) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [answer ids, ...])`` of one list, each answer tokenized as a pair's chosen. No truncation."""
    tok = text_tokenizer(tokenizer)
    ids = tok(_texts(item, tokenizer, index), add_special_tokens=False)["input_ids"]
    return finish_ids(ids[0], ids[1:], tok, special_tokens(tokenizer))


def truncate_list(prompt_ids: list[int], completion_ids: list[list[int]], limits: LengthLimits, tokenizer
                  ) -> tuple[list[int], list[list[int]]] | None:
    """The ids of a prepared list cut to `limits` (module docstring); None: the list is dropped."""
    return truncate_ids(prompt_ids, completion_ids, limits, bos_token_id=special_tokens(tokenizer).bos)


class _ListRows:
    """The map function of `prepare_lists`; a plain picklable object."""

    def __init__(self, tokenizer, limits: LengthLimits, columns: Mapping[str, str | None] | None,
                 lists: Sequence[ScoredList | PreferencePair] | None = None):
        self.tokenizer, self.limits = tokenizer, limits
        self.columns = dict(columns) if columns else None
        self.lists = lists

    def item(self, row: Mapping, index: int) -> ScoredList:
        if self.lists is None:
            return to_scored_list(row, index, self.columns)
        item = self.lists[index]
        return pair_as_list(item) if isinstance(item, PreferencePair) else item

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        keys = list(batch)
        return self.process([{k: batch[k][i] for k in keys} for i in range(len(indices))], indices)

    def process(self, rows: Sequence[Mapping], indices: Sequence[int]) -> dict[str, list]:
        n = len(rows)
        out: dict[str, list] = {c: [[] for _ in range(n)] for c in LIST_ID_COLUMNS}
        status, errors = [BAD] * n, [""] * n
        texts, spans = [], []  # spans: (row position, first text, number of texts)
        for j, (row, index) in enumerate(zip(rows, indices)):
            try:
                item = self.item(row, index)
                row_texts = _texts(item, self.tokenizer, index)
            except DataError as e:
                errors[j] = str(e)
                continue
            out["scores"][j] = list(item.scores)
            spans.append((j, len(texts), len(row_texts)))
            texts.extend(row_texts)
        if not spans:
            out[_STATUS], out[_ERROR] = status, errors
            return out
        tok = text_tokenizer(self.tokenizer)
        specials = special_tokens(self.tokenizer)
        ids = tok(texts, add_special_tokens=False)["input_ids"]  # one batched call
        for j, start, count in spans:
            prompt, answers = finish_ids(ids[start], ids[start + 1: start + count], tok, specials)
            cut = truncate_ids(prompt, answers, self.limits, bos_token_id=specials.bos)
            if cut is None:
                status[j] = _DROPPED.get(ids_drop_reason(len(prompt), self.limits), DROPPED_EMPTY)
                continue
            same = cut[0] is prompt and all(len(a) == len(b) for a, b in zip(cut[1], answers))
            status[j] = KEPT if same else TRUNCATED
            out["prompt_ids"][j], out["completion_ids"][j] = cut[0], cut[1]
        out[_STATUS], out[_ERROR] = status, errors
        return out


def _features():
    from datasets import Features, List, Value

    return Features({"prompt_ids": List(Value("int32")), "completion_ids": List(List(Value("int32"))),
                     "scores": List(Value("float64")), _STATUS: Value("int8"), _ERROR: Value("string")})


def _fingerprint(dataset, tokenizer, limits: LengthLimits, columns, with_lists: bool) -> str:
    h = hashlib.sha256()
    code = b"".join((Path(__file__).parent / name).read_bytes()
                    for name in ("pairs.py", "formats.py", "lists.py", "registry.py", "tokenize.py", "list_prepare.py"))
    for part in (dataset._fingerprint, hashlib.sha256(code).hexdigest(), tokenizer_hash(tokenizer), repr(limits),
                 repr(sorted((columns or {}).items(), key=str)), f"lists={with_lists}"):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def prepare_lists(
    dataset: Any,
    tokenizer,
    limits: LengthLimits,
    *,
    columns: Mapping[str, str | None] | None = None,
    skip_bad_rows: bool = False,
    lists: Sequence[ScoredList | PreferencePair] | None = None,
    desc: str = "Tokenizing scored lists",
):
    """Turn a `datasets.Dataset` (or a list of dict rows) of list rows, pair rows or both into token ids.

    Returns ``(dataset, report)``: a Dataset with only ``prompt_ids``, ``completion_ids`` and ``scores`` columns
    (module docstring), and a `ListReport`. Raises DataError naming the first bad row and the number of bad rows
    (unless `skip_bad_rows`), DataError when no list is left, ConfigError for data with images.
    `lists`: the rows already checked and normalised, one per row (`LoadedData.pairs` of list data; pairs are
    taken as lists of two): tokenized as they are instead of normalising the rows again (not with `columns`,
    which they did not see). `desc`: the progress bar's text.
    """
    import datasets

    if lists is not None and len(lists) != len(dataset):
        raise ValueError(f"{len(lists)} lists for a data set of {len(dataset)} rows")
    if columns:
        check_columns(columns)
        lists = None
    if isinstance(dataset, (datasets.Dataset, list, tuple)):
        found = image_column(dataset, columns)
        if found is not None:
            raise ConfigError(f"The data has images (column '{found}'), but list rows (several scored answers per prompt) "
                              f"do not support images; train this data as pairs, or drop the column (columns={{'{found}': None}}).")
    if isinstance(dataset, datasets.Dataset):
        source = dataset.with_format(None) if dataset.format["type"] is not None else dataset
        processed = source.map(
            _ListRows(tokenizer, limits, columns, lists), with_indices=True, batched=True,
            remove_columns=source.column_names, features=_features(),
            new_fingerprint=_fingerprint(source, tokenizer, limits, columns, lists is not None), desc=desc,
        )
    elif isinstance(dataset, (list, tuple)):
        rows = _ListRows(tokenizer, limits, columns, lists)
        parts: dict[str, list] = {c: [] for c in (*LIST_ID_COLUMNS, _STATUS, _ERROR)}
        for start in range(0, len(dataset), _CHUNK):
            chunk = list(dataset[start: start + _CHUNK])
            bad = next((i for i, row in enumerate(chunk) if not isinstance(row, Mapping)), None)
            if bad is not None:
                raise DataError(f"row {start + bad} is {type(chunk[bad]).__name__}, not a mapping of column names to "
                                "values; pass a list of dicts or a datasets.Dataset.")
            for key, values in rows.process(chunk, range(start, start + len(chunk))).items():
                parts[key].extend(values)
        processed = datasets.Dataset.from_dict(parts, features=_features())
    else:
        raise TypeError(f"prepare_lists takes a datasets.Dataset or a list of dict rows, not {type(dataset).__name__}")

    status = processed.data.column(_STATUS).to_numpy()
    n_rows = len(status)
    if n_rows == 0:
        raise DataError("The dataset has no rows; check the split or the file you loaded.")
    bad_idx = np.flatnonzero(status == BAD)
    first_errors = tuple(processed.select(bad_idx[:_N_ERRORS].tolist())[_ERROR]) if len(bad_idx) else ()
    kept_idx = np.flatnonzero(status <= TRUNCATED)
    sizes = np.asarray([len(s) for s in processed.data.column("scores").to_pylist()], dtype=np.int64)
    if len(bad_idx) and not skip_bad_rows:
        raise DataError(f"{first_errors[0].rstrip('.')} ({len(bad_idx)} of {n_rows} rows are bad; fix them, or set "
                        "skip_bad_rows=True / --skip_bad_rows to drop them).")
    if len(kept_idx) < n_rows:
        processed = processed.select(kept_idx.tolist())
    processed = processed.remove_columns([_STATUS, _ERROR])
    report = ListReport(
        n_rows=n_rows,
        n_kept=len(kept_idx),
        n_dropped_empty_after_truncation=int(np.isin(status, (DROPPED_EMPTY, DROPPED_PROMPT, DROPPED_COMPLETION)).sum()),
        n_truncated=int((status == TRUNCATED).sum()),
        n_bad_rows=len(bad_idx),
        first_errors=first_errors,
        n_dropped_long_prompt=int((status == DROPPED_PROMPT).sum()),
        n_dropped_long_completion=int((status == DROPPED_COMPLETION).sum()),
        n_answers=int(sizes[kept_idx].sum()),
    )
    if report.n_kept == 0:
        raise DataError(f"No list is left to train on: {report.summary().replace(chr(10), '; ')}.")
    return processed, report
