"""A whole data set -> token ids, with a report of what was cut, dropped or bad.

`prepare_dataset` runs, per row: `to_preference_pair` (formats) -> `render_pair`
(chat template) -> one batched tokenizer call for the whole map batch -> BOS/EOS
rules -> `truncate_pair`. The result holds only ``prompt_ids``, ``chosen_ids`` and
``rejected_ids`` (int32 lists), ready for `PreferenceCollator`. With
``is_encoder_decoder=True`` (T5, BART) the texts keep the tokenizer's special tokens
and the prompt and completions are limited separately (see `preftune.data.tokenize`);
the columns are the same, ready for `EncoderDecoderCollator`.

Rows are never dropped silently: pairs that truncation would leave with an empty
completion are dropped and counted; rows that cannot be used (wrong shape, None
fields, ...) raise one DataError naming the first of them and how many there are,
or are dropped and counted with ``skip_bad_rows=True``. A data set loaded with its rows
checked (`preftune.data.sources.load_sources`) comes with its rows' pairs, normalised
then (`LoadedData.pairs`, passed as ``pairs``): they are tokenized as they are, not
normalised a second time (except with a ``columns`` mapping, which they did not see,
and in ``num_proc`` workers, which would each need a copy of all of them). Images are not read here
(their columns are left out of the map, so they are never decoded), except for a
vision-language model's processor (below). Data with images and a text tokenizer is refused
(ConfigError, as TRL raises ValueError; found from the arrow column's nulls, nothing decoded):
trainer and command line both prepare their data here, so both refuse it.

Vision-language models (``tokenizer`` is a processor with an image processor, e.g.
``LlavaProcessor``): the ``images`` column (a list per row), or TRL's ``image`` column
(one image per row), or the column mapped to either, is read, and
a pair with images gets its prompt ids from the processor, every image placeholder
expanded to the model's image tokens (`preftune.data.images`). Such a prompt is NEVER
truncated (cutting image tokens would break the model's image/feature match, and
``max_prompt_length`` does not apply to it): only the completions are cut to fit
``max_length``, and a pair whose prompt leaves no room for a completion is dropped and
counted like any pair left with an empty completion. The result keeps the images
column (as given: the images are encoded by `VisionPreferenceCollator`, per batch).

The map passes ``new_fingerprint`` computed from the input fingerprint, the
tokenizer (vocabulary, special tokens, chat template), the limits, the column
mapping, the encoder-decoder flag and this package's data code, so datasets never tries to hash the
tokenizer and its on-disk cache is reused exactly when the output would be equal.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from preftune.data.formats import check_columns, row_images, to_preference_pair
from preftune.data.images import image_prompt_ids, is_vision_processor
from preftune.data.pairs import PreferencePair
from preftune.data.tokenize import (
    COMPLETION_FILLS_MAX_LENGTH,
    PROMPT_FILLS_MAX_LENGTH,
    LengthLimits,
    drop_reason,
    finish_pair,
    render_pair,
    special_tokens,
    text_tokenizer,
    truncate_pair,
)
from preftune.errors import ConfigError, DataError

ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
IMAGES_COLUMN = "images"  # kept for vision-language models
IMAGE_COLUMNS = ("images", "image")  # TRL's vision columns: a list of images, or one image
_STATUS, _ERROR = "_preftune_status", "_preftune_error"
KEPT, TRUNCATED, DROPPED_EMPTY, BAD, DROPPED_PROMPT, DROPPED_COMPLETION = 0, 1, 2, 3, 4, 5
_DROPPED = {PROMPT_FILLS_MAX_LENGTH: DROPPED_PROMPT, COMPLETION_FILLS_MAX_LENGTH: DROPPED_COMPLETION}
_N_ERRORS = 5
_LIST_CHUNK = 1000


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare_dataset` did. `n_truncated` counts kept pairs whose prompt or
    a completion was cut; dropped pairs are counted only in their own field.
    `n_dropped_empty_after_truncation` counts every pair truncation dropped; of those,
    `n_dropped_long_prompt` had a prompt of max_length tokens or more (TRL 1.16 drops
    them too) and `n_dropped_long_completion` (keep_end) a completion that alone fills
    max_length."""

    n_rows: int
    n_kept: int
    n_dropped_empty_after_truncation: int
    n_truncated: int
    n_bad_rows: int
    first_errors: tuple[str, ...] = ()
    n_dropped_long_prompt: int = 0
    n_dropped_long_completion: int = 0

    # The words of `summary`: what a row is, and what one of its answers is (ListReport says lists, answers).
    _unit, _answer, _as_trl = "pairs", "completion", "as TRL does"

    def _head(self) -> str:
        n = f"{self.n_kept}" if self.n_kept == self.n_rows else f"{self.n_kept} of {self.n_rows}"
        return f"prepared {n} {self._unit}"

    def summary(self) -> str:
        """One or two lines for a log."""
        answer = f"an {self._answer}" if self._answer[0] in "aeiou" else f"a {self._answer}"
        parts = [f"{self.n_truncated} truncated"]
        if self.n_dropped_long_prompt:
            parts.append(f"{self.n_dropped_long_prompt} dropped because the prompt alone fills --max_length, leaving no "
                         f"room for {answer} ({self._as_trl}; raise --max_length)")
        if self.n_dropped_long_completion:
            parts.append(f"{self.n_dropped_long_completion} dropped because {answer} alone fills --max_length, so "
                         "keep_end would keep no prompt token (raise --max_length or use --truncation_mode keep_start)")
        other = self.n_dropped_empty_after_truncation - self.n_dropped_long_prompt - self.n_dropped_long_completion
        if other:
            parts.append(f"{other} dropped because truncation left an empty {self._answer} (raise --max_length or "
                         "lower --max_prompt_length)")
        if self.n_bad_rows:
            parts.append(f"{self.n_bad_rows} bad {'row' if self.n_bad_rows == 1 else 'rows'} skipped")
        text = f"{self._head()}: {', '.join(parts)}"
        if self.first_errors:
            text += f"\nfirst bad row: {self.first_errors[0]}"
        return text


class _RowProcessor:
    """The map function; a plain picklable object (no closures) for num_proc."""

    def __init__(self, tokenizer, limits: LengthLimits, columns: Mapping[str, str | None] | None,
                 is_encoder_decoder: bool = False, pairs: Sequence[PreferencePair] | None = None):
        self.tokenizer = tokenizer
        self.limits = limits
        self.columns = dict(columns) if columns else None
        self.is_encoder_decoder = bool(is_encoder_decoder)
        self.vision = is_vision_processor(tokenizer)  # a VLM's processor: prompts with images expand them
        self.pairs = pairs  # the rows' pairs, normalised when they were loaded (indexed like the rows)

    def pair(self, row: Mapping, index: int) -> PreferencePair:
        if self.pairs is None:
            return to_preference_pair(row, index, self.columns)
        pair = self.pairs[index]  # loading reads no images: a VLM's rows add theirs
        return pair.with_images(row_images(row)) if self.vision else pair

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        keys = list(batch)
        rows = [{k: batch[k][i] for k in keys} for i in range(len(indices))]
        return self.process(rows, indices)

    def process(self, rows: Sequence[Mapping], indices: Sequence[int]) -> dict[str, list]:
        n = len(rows)
        out: dict[str, list] = {c: [[] for _ in range(n)] for c in ID_COLUMNS}
        status, errors = [BAD] * n, [""] * n
        texts, good, images = [], [], []
        for j, (row, index) in enumerate(zip(rows, indices)):
            try:
                pair = self.pair(row, index)
                texts.extend(render_pair(pair, self.tokenizer, index=index))
                images.append(pair.images if self.vision else None)
                good.append(j)
            except DataError as e:
                errors[j] = str(e)
        if good:
            specials = special_tokens(self.tokenizer)
            tok = text_tokenizer(self.tokenizer)
            enc_dec = self.is_encoder_decoder
            ids = tok(texts, add_special_tokens=enc_dec)["input_ids"]  # one batched call
            for m, j in enumerate(good):
                prompt_ids = ids[3 * m]
                if images[m]:  # the processor expands the image placeholders into the model's image tokens
                    try:
                        prompt_ids = image_prompt_ids(self.tokenizer, texts[3 * m], images[m], f"row {indices[j]}")
                    except DataError as e:
                        errors[j] = str(e)
                        continue
                tp = finish_pair(prompt_ids, ids[3 * m + 1], ids[3 * m + 2], tok, specials, is_encoder_decoder=enc_dec)
                cut = truncate_pair(tp, self.limits, is_encoder_decoder=enc_dec, keep_prompt=bool(images[m]))
                if cut is None:
                    reason = drop_reason(tp, self.limits, is_encoder_decoder=enc_dec, keep_prompt=bool(images[m]))
                    status[j] = _DROPPED.get(reason, DROPPED_EMPTY)
                    continue
                status[j] = KEPT if cut is tp else TRUNCATED
                out["prompt_ids"][j], out["chosen_ids"][j], out["rejected_ids"][j] = cut.prompt_ids, cut.chosen_ids, cut.rejected_ids
        out[_STATUS], out[_ERROR] = status, errors
        return out


def _features():
    from datasets import Features, List, Value

    ids = List(Value("int32"))
    return Features({**{c: ids for c in ID_COLUMNS}, _STATUS: Value("int8"), _ERROR: Value("string")})


@lru_cache(maxsize=1)
def _code_hash() -> str:
    h = hashlib.sha256()
    for name in ("pairs.py", "formats.py", "tokenize.py", "prepare.py", "images.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """A hash of what tokenizing depends on (vocabulary, special tokens, chat template, a processor's image settings),
    for the `datasets.map` fingerprints of prepared data."""
    tok = text_tokenizer(tokenizer)
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    template = getattr(tokenizer, "chat_template", None)
    h.update(json.dumps([type(tokenizer).__name__, template, tok.bos_token_id, tok.eos_token_id, len(tok)], sort_keys=True, default=str).encode())
    if is_vision_processor(tokenizer):  # the image token count depends on the processor's settings
        h.update(json.dumps([getattr(tokenizer, "image_token", None), getattr(tokenizer, "patch_size", None),
                             getattr(tokenizer, "vision_feature_select_strategy", None),
                             getattr(tokenizer, "num_additional_image_tokens", None),
                             tokenizer.image_processor.to_json_string()], default=str).encode())
    return h.hexdigest()


def _fingerprint(dataset, tokenizer, limits: LengthLimits, columns, is_encoder_decoder: bool = False) -> str:
    h = hashlib.sha256()
    for part in (dataset._fingerprint, _code_hash(), tokenizer_hash(tokenizer), repr(limits),
                 repr(sorted((columns or {}).items(), key=str)), f"is_encoder_decoder={bool(is_encoder_decoder)}"):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _image_sources(columns: Mapping[str, str | None] | None) -> set[str]:
    """The columns that hold images: those mapped to ``images``/``image``, and those names themselves
    unless mapped away (to None or another name) or taken by a mapped column."""
    columns = columns or {}
    sources = {src for src, target in columns.items() if target in IMAGE_COLUMNS}
    for name in IMAGE_COLUMNS:
        if name not in columns and not any(t == name for t in columns.values()):
            sources.add(name)
    return sources


def _has_images(dataset, sources: set[str]) -> str | None:
    """The first image column with an image in it (None: no image at all), read without decoding any image."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        table = dataset.data
        for name in sorted(sources & set(dataset.column_names)):
            column = table.column(name)
            if column.null_count < len(column):
                return name
        return None
    for row in dataset:
        if isinstance(row, Mapping):
            for name in sorted(sources):
                if row.get(name) not in (None, [], ()):
                    return name
    return None


def image_column(dataset, columns: Mapping[str, str | None] | None = None) -> str | None:
    """The column of `dataset` (a Dataset or a list of dict rows) that holds images, or None: TRL's
    ``images``/``image`` columns, or the one `columns` maps to them; only columns with at least one image count."""
    return _has_images(dataset, _image_sources(columns))


def _row_images(row: Mapping, sources: set[str]):
    """A list row's images as a list (None without images), from the first image column it has."""
    for src in sources:
        value = row.get(src)
        if value is not None:
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return None


def prepare_dataset(
    dataset: Any,
    tokenizer,
    limits: LengthLimits,
    *,
    columns: Mapping[str, str | None] | None = None,
    skip_bad_rows: bool = False,
    num_proc: int | None = None,
    desc: str = "Tokenizing preference pairs",
    is_encoder_decoder: bool = False,
    pairs: Sequence[PreferencePair] | None = None,
    ignore_images: bool = False,
):
    """Turn a `datasets.Dataset` (or a list of dict rows) into token ids.

    Returns ``(dataset, report)``: a Dataset with only ``prompt_ids``,
    ``chosen_ids`` and ``rejected_ids`` columns (plus ``images`` when `tokenizer` is a
    vision-language model's processor and the data has images), and a `PrepareReport`. Raises
    DataError naming the first bad row and the number of bad rows (unless
    `skip_bad_rows`), and DataError when no row is left to train on.
    `is_encoder_decoder`: tokenize and truncate for an encoder-decoder model (T5, BART).
    `pairs`: the rows already checked and normalised, one per row (`LoadedData.pairs`): tokenized
    as they are instead of normalising the rows again.

    Data with images (an ``images`` or ``image`` column with at least one image) needs a vision-language
    model's processor as `tokenizer`: with a text tokenizer it raises ConfigError (TRL raises ValueError),
    since training would silently leave the images out; `ignore_images` (``preftune data inspect``)
    tokenizes the text only instead.
    """
    import datasets

    if pairs is not None and len(pairs) != len(dataset):
        raise ValueError(f"{len(pairs)} pairs for a data set of {len(dataset)} rows")

    if columns:
        check_columns(columns)  # a bad --columns is a config error, before any row is read
    image_sources = _image_sources(columns)
    vision = is_vision_processor(tokenizer)
    if not vision and not ignore_images and isinstance(dataset, (datasets.Dataset, list, tuple)):
        found = _has_images(dataset, image_sources)
        if found is not None:
            raise ConfigError(
                f"The data has images (column '{found}') but {type(tokenizer).__name__} is a text tokenizer, not a "
                "vision-language model's processor, so training would leave the images out; train a vision-language "
                f"model with its processor (AutoProcessor.from_pretrained(...)), or drop the column (columns={{'{found}': None}})."
            )
    if vision:  # the processor reads the images; the column is kept for the collator
        map_columns, image_sources_read = (dict(columns) if columns else None), set()
    else:
        map_columns = {k: v for k, v in (columns or {}).items() if k not in image_sources} or None
        image_sources_read = image_sources
    images = None  # vision: a one-column dataset of the images, aligned with the rows
    if isinstance(dataset, datasets.Dataset):
        keep = [c for c in dataset.column_names if c not in image_sources_read]
        source = dataset.select_columns(keep) if len(keep) < len(dataset.column_names) else dataset
        if source.format["type"] is not None:
            source = source.with_format(None)  # rows as plain python objects, whatever the user's format
        if columns or (num_proc and num_proc > 1):  # renamed columns; or workers, which normalise their own rows
            pairs = None
        processed = source.map(
            _RowProcessor(tokenizer, limits, map_columns, is_encoder_decoder, pairs),
            with_indices=True,
            batched=True,
            remove_columns=source.column_names,
            features=_features(),
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            new_fingerprint=_fingerprint(source, tokenizer, limits, map_columns, is_encoder_decoder),
            desc=desc,
        )
        present = [c for c in dataset.column_names if c in image_sources]
        if vision and present:
            images = dataset.select_columns(present[:1])
            if present[0] != IMAGES_COLUMN:
                images = images.rename_column(present[0], IMAGES_COLUMN)
    elif isinstance(dataset, (list, tuple)):
        processor = _RowProcessor(tokenizer, limits, map_columns, is_encoder_decoder)
        parts: dict[str, list] = {c: [] for c in (*ID_COLUMNS, _STATUS, _ERROR)}
        for start in range(0, len(dataset), _LIST_CHUNK):
            chunk = [{k: v for k, v in row.items() if k not in image_sources_read} if isinstance(row, Mapping) else row for row in dataset[start : start + _LIST_CHUNK]]
            bad = next((i for i, row in enumerate(chunk) if not isinstance(row, Mapping)), None)
            if bad is not None:
                raise DataError(f"row {start + bad} is {type(chunk[bad]).__name__}, not a mapping of column names to values; pass a list of dicts or a datasets.Dataset.")
            result = processor.process(chunk, range(start, start + len(chunk)))
            for key, values in result.items():
                parts[key].extend(values)
        processed = datasets.Dataset.from_dict(parts, features=_features())
        if vision:
            values = [_row_images(row, image_sources) for row in dataset]
            if any(v is not None for v in values):
                images = datasets.Dataset.from_dict({IMAGES_COLUMN: values})
    else:
        raise TypeError(f"prepare_dataset takes a datasets.Dataset or a list of dict rows, not {type(dataset).__name__}")

    status = processed.data.column(_STATUS).to_numpy()
    n_rows = len(status)
    if n_rows == 0:
        raise DataError("The dataset has no rows; check the split or the file you loaded.")
    bad_idx = np.flatnonzero(status == BAD)
    first_errors = tuple(processed.select(bad_idx[:_N_ERRORS].tolist())[_ERROR]) if len(bad_idx) else ()
    kept_idx = np.flatnonzero(status <= TRUNCATED)
    report = PrepareReport(
        n_rows=n_rows,
        n_kept=len(kept_idx),
        n_dropped_empty_after_truncation=int(np.isin(status, (DROPPED_EMPTY, DROPPED_PROMPT, DROPPED_COMPLETION)).sum()),
        n_truncated=int((status == TRUNCATED).sum()),
        n_bad_rows=len(bad_idx),
        first_errors=first_errors,
        n_dropped_long_prompt=int((status == DROPPED_PROMPT).sum()),
        n_dropped_long_completion=int((status == DROPPED_COMPLETION).sum()),
    )
    if images is not None:
        processed = datasets.concatenate_datasets([processed, images], axis=1)
    if len(bad_idx) and not skip_bad_rows:
        raise DataError(
            f"{first_errors[0].rstrip('.')} ({len(bad_idx)} of {n_rows} rows are bad; fix them, or set skip_bad_rows=True / --skip_bad_rows to drop them)."
        )
    if report.n_kept == 0:
        raise DataError(f"No pair is left to train on: {report.summary().replace(chr(10), '; ')}.")
    if report.n_kept < n_rows:
        processed = processed.select(kept_idx.tolist())
    return processed.remove_columns([_STATUS, _ERROR]), report


LENGTH_SAMPLERS = ("group_by_length", "batch_rebalance")


def with_pair_lengths(dataset, column: str = "length"):
    """`dataset` with a `column` of each pair's token count (prompt + chosen + rejected ids), for
    transformers' length-aware samplers (`train_sampling_strategy` group_by_length / batch_rebalance),
    which otherwise look for an `input_ids` column that preference data does not have.

    P + C + R is what a pair costs with prefix sharing (the prompt once) and orders pairs as the
    plain path's padded width P + max(C, R) does, up to ties. A column already there is kept.
    """
    if column in dataset.column_names:
        return dataset
    lengths = [len(p) + len(c) + len(r) for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"],
                                                               dataset["rejected_ids"])]
    return dataset.add_column(column, lengths)


# ----------------------------------------------------------------------- streams


class _StreamRows:
    """The map function of `prepare_stream`: `_RowProcessor`'s work, then each row's fate decided at once
    (a stream is read once, so nothing can be counted and reported before training)."""

    def __init__(self, tokenizer, limits: LengthLimits, is_encoder_decoder: bool, split: str):
        self.rows = _RowProcessor(tokenizer, limits, None, is_encoder_decoder)
        self.split = split

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        import logging

        keys = list(batch)
        out = self.rows.process([{k: batch[k][i] for k in keys} for i in range(len(indices))], indices)
        kept = []
        for j, status in enumerate(out[_STATUS]):
            if status == BAD:
                error = out[_ERROR][j].rstrip(".")
                if f"row {indices[j]}" not in error:
                    error = f"row {indices[j]}: {error}"
                raise DataError(f"{error} (streamed {self.split} data; a stream cannot skip and count bad rows: "
                                "fix or filter it first).")
            if status == DROPPED_EMPTY:
                logging.getLogger(__name__).warning("%s stream: row %d dropped, truncation left an empty completion",
                                                    self.split, indices[j])
                continue
            kept.append(j)
        return {c: [out[c][j] for j in kept] for c in ID_COLUMNS}


def prepare_stream(dataset, tokenizer, limits: LengthLimits, *, is_encoder_decoder: bool = False, split: str = "train"):
    """A `datasets.IterableDataset` (a stream) -> a stream of ``prompt_ids``, ``chosen_ids``, ``rejected_ids``,
    tokenized as its rows are read (nothing is read here), by the same rules as `prepare_dataset`.

    A bad row raises DataError naming its index in the stream when it is reached (dropping and counting
    bad rows, ``skip_bad_rows``, needs the whole set up front); a pair that truncation leaves with an empty
    completion is dropped, with a warning naming its index.
    """
    features = _features()
    ids = features.copy()
    for name in (_STATUS, _ERROR):
        del ids[name]
    mapped = dataset.map(_StreamRows(tokenizer, limits, is_encoder_decoder, split), batched=True, with_indices=True,
                         remove_columns=dataset.column_names, features=ids)
    return mapped.select_columns(list(ID_COLUMNS))
