"""What a trainer is given, checked and turned into what it trains on: prepared data (token ids and
the report of how they were made), the tokenizer argument under either of its names, whether the
model is an encoder-decoder one, and the name of the model it starts from (for the model card)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from preftune.data.images import is_vision_processor
from preftune.data.prepare import LENGTH_SAMPLERS, PrepareReport, prepare_dataset, prepare_stream
from preftune.errors import ConfigError
from preftune.logps import is_encoder_decoder_model
from preftune.models import text_tokenizer
from preftune.train.config import PreferenceConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """A split as the trainer trains on it: token ids (`prepare_split`) and how they were made."""

    dataset: datasets.Dataset
    report: PrepareReport


def base_model_name(model) -> str | None:
    """The hub id or path the policy was loaded from (the base, for an adapter)."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        name = next(iter(peft_config.values())).base_model_name_or_path
        if name:
            return name
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def prepare_split(dataset, tokenizer, args: PreferenceConfig, split: str, is_encoder_decoder: bool = False,
                  pairs=None) -> PreparedData:
    """Rows -> token ids with `args`' length limits and bad-row policy, and the report of it.

    The command line calls this before loading the model's weights, so that every
    data problem is found first, and hands the result to the trainer; the trainer
    calls it for raw datasets it is given. `is_encoder_decoder`: tokenize for an
    encoder and a decoder (T5, BART). `pairs`: the rows as already checked (`LoadedData.pairs`).
    """
    with args.main_process_first(desc=f"preparing {split} data"):
        prepared, report = prepare_dataset(
            dataset, tokenizer if is_vision_processor(tokenizer) else text_tokenizer(tokenizer), args.length_limits(),
            skip_bad_rows=args.skip_bad_rows,
            num_proc=args.dataset_num_proc, desc=f"tokenizing {split} pairs",
            is_encoder_decoder=is_encoder_decoder, pairs=pairs,
        )
    level = logging.WARNING if (report.n_dropped_empty_after_truncation or report.n_bad_rows) else logging.INFO
    logger.log(level, "%s data: %s", split, report.summary())
    return PreparedData(prepared, report)


def is_stream(dataset) -> bool:
    """A `datasets.IterableDataset` (e.g. ``load_dataset(..., streaming=True)``): read once, in order, no length."""
    return isinstance(dataset, datasets.IterableDataset)


def prepare_stream_split(dataset, tokenizer, args: PreferenceConfig, split: str, is_encoder_decoder: bool = False):
    """A streamed split -> a stream of token ids, tokenized as it is read (`preftune.data.prepare.prepare_stream`)."""
    return prepare_stream(dataset, tokenizer if is_vision_processor(tokenizer) else text_tokenizer(tokenizer),
                          args.length_limits(), is_encoder_decoder=is_encoder_decoder, split=split)


def check_streams(args: PreferenceConfig, train_dataset, eval_dataset, vision: bool = False) -> None:
    """Refuse, in one sentence naming the option, what needs a whole data set when a split is a stream."""
    evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
    streams = [split for split, ds in [("train", train_dataset), *evals] if is_stream(ds)]
    if not streams:
        return
    where = f"the {streams[0]} data is a stream (datasets.IterableDataset)"
    if "train" in streams and args.max_steps <= 0:
        raise ConfigError(f"{where}, whose length is unknown: set max_steps (the number of optimizer steps to train), "
                          "as transformers requires.")
    if getattr(args, "precompute_ref_log_probs", False):
        raise ConfigError(f"precompute_ref_log_probs=True runs the reference over the whole data before training, but "
                          f"{where}; pass a datasets.Dataset or set precompute_ref_log_probs=False.")
    if "train" in streams and args.train_sampling_strategy in LENGTH_SAMPLERS:
        raise ConfigError(f"train_sampling_strategy={args.train_sampling_strategy!r} (group_by_length=True) orders the "
                          f"pairs by length, which needs the whole data, but {where}; leave it 'random' or pass a "
                          "datasets.Dataset.")
    if args.skip_bad_rows:
        raise ConfigError(f"skip_bad_rows=True drops and counts bad rows before training, but {where} and is read "
                          "once; set skip_bad_rows=False (a bad row then stops the run naming its index) or pass a "
                          "datasets.Dataset.")
    if vision:
        raise ConfigError(f"{where}, which preftune does not support with a vision-language model's processor; pass a "
                          "datasets.Dataset.")


def resolve_encoder_decoder(model, flag: bool | None) -> bool:
    """args.is_encoder_decoder, or the model's config when unset (False for model_init without the flag)."""
    if model is None:
        return bool(flag)
    detected = is_encoder_decoder_model(model)
    if flag is not None and bool(flag) != detected:
        raise ConfigError(f"is_encoder_decoder={flag} but the model's config says is_encoder_decoder={detected}; "
                          "leave is_encoder_decoder unset (it is read from the model).")
    return detected


def check_no_images(*datasets) -> None:
    """A vision-language model given a plain tokenizer would silently train without the images."""
    for dataset in datasets:
        for ds in (dataset.values() if isinstance(dataset, dict) else [dataset]):
            if "images" in (getattr(ds, "column_names", None) or []):
                raise ConfigError("the model is a vision-language model and the data has images, but processing_class "
                                  "is a tokenizer; pass the model's processor (AutoProcessor.from_pretrained(...)).")


def is_tokenized(dataset) -> bool:
    """A user's data set already holding token ids (TRL accepts those too), pairs or list rows."""
    names = getattr(dataset, "column_names", None)
    return names is not None and ({"prompt_ids", "chosen_ids", "rejected_ids"} <= set(names)
                                  or {"prompt_ids", "completion_ids", "scores"} <= set(names))


def one_processing_class(processing_class, tokenizer):
    if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
        raise ConfigError("pass the tokenizer once: processing_class and tokenizer are two names for the same argument.")
    return processing_class if processing_class is not None else tokenizer


# ------------------------------------------------------------------ list rows (issue 17)


def _columns_of(dataset) -> set[str]:
    """Column names of a data set, a `PreparedData`, or a list of dict rows (their union)."""
    if isinstance(dataset, PreparedData):
        dataset = dataset.dataset
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return set(names)
    if isinstance(dataset, (list, tuple)):
        return {k for row in dataset if isinstance(row, dict) for k in row}
    return set()


def holds_lists(dataset) -> bool:
    """Whether a split holds list rows (one prompt, several scored answers), raw or tokenized."""
    from preftune.data.lists import is_list_columns

    columns = _columns_of(dataset)
    return "completion_ids" in columns or is_list_columns(columns)


def wants_list_rows(args: PreferenceConfig, train_dataset, eval_dataset) -> bool:
    """Train on list rows when any split holds them or the loss is listwise (pair rows then become lists of two)."""
    evals = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    splits = [d for d in (train_dataset, *evals) if d is not None]
    return bool(getattr(args, "listwise_loss", None)) or any(holds_lists(d) for d in splits)


def check_list_rows(args: PreferenceConfig, *, encoder_decoder: bool, vision: bool, streaming: bool) -> None:
    """Refuse, in one sentence, what list rows do not support."""
    what = ("the data holds list rows (one prompt, several scored answers)" if not getattr(args, "listwise_loss", None)
            else f"loss_type {args.listwise_loss!r} trains on list rows")
    if encoder_decoder:
        raise ConfigError(f"{what}, which need a decoder-only model (the answers share the prompt's packed row); "
                          "an encoder-decoder model is not supported.")
    if vision:
        raise ConfigError(f"{what}, which are not supported with a vision-language model's processor.")
    if streaming:
        raise ConfigError(f"{what}, which are not supported from a stream (datasets.IterableDataset); pass a "
                          "datasets.Dataset.")
    if getattr(args, "ld_alpha", None) is not None:
        raise ConfigError(f"ld_alpha (LD-DPO) weighs a pair's two answers by the shorter one's length, but {what}; "
                          "drop ld_alpha.")


def prepare_list_split(dataset, tokenizer, args: PreferenceConfig, split: str, lists=None) -> PreparedData:
    """List rows (and pair rows, as lists of two) -> token ids (`preftune.data.list_prepare`), and the report."""
    from preftune.data.list_prepare import prepare_lists

    with args.main_process_first(desc=f"preparing {split} data"):
        prepared, report = prepare_lists(dataset, text_tokenizer(tokenizer), args.length_limits(),
                                         skip_bad_rows=args.skip_bad_rows, lists=lists,
                                         desc=f"tokenizing {split} lists")
    level = logging.WARNING if (report.n_dropped_empty_after_truncation or report.n_bad_rows) else logging.INFO
    logger.log(level, "%s data: %s", split, report.summary())
    return PreparedData(prepared, report)


def with_list_lengths(dataset, column: str = "length"):
    """`dataset` with a `column` of each list row's token count (prompt + every answer: its cost with
    prefix sharing), for transformers' length-aware samplers. A column already there is kept."""
    if column in dataset.column_names:
        return dataset
    lengths = [len(p) + sum(len(a) for a in answers)
               for p, answers in zip(dataset["prompt_ids"], dataset["completion_ids"])]
    return dataset.add_column(column, lengths)
