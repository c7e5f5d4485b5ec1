"""The one dispatcher: how a model's log-probs are computed, decided once per model.

`choose_logps_path(model, options)` looks at the model (its config, its forward, its attention
implementation) and returns a `LogpsPath`, which the trainer, the reference providers and the
precompute pass then call on every batch, with the objective's `LogpsRequest`:

- encoder-decoder (config ``is_encoder_decoder``): `seq2seq.encoder_decoder_logps`, the
  prompt encoded once per pair; prefix sharing does not apply;
- vision-language (config ``vision_config``): the causal path with the batch's image inputs;
  no prefix sharing (image features are merged into the prompt);
- decoder-only: prefix-shared packed rows (`prefix.shared_prefix_logps`) when
  `options.prefix_sharing` and `options.chunked` and `prefix.prefix_sharing_blockers` finds
  nothing; else the chunked causal path when `options.chunked` and the model accepts
  `logits_to_keep`; else the plain one (full logits).

`options.padding_free` (the config's `padding_free`) packs the batch into one row without
padding: the prefix-shared path concatenates its pair rows (block-diagonal mask, exact wherever
prefix sharing is); the causal paths pack the 2B rows with restarting position ids where
`packing.padding_free_blockers` finds nothing. Where it would not be exact (encoder-decoder,
vision-language, an attention implementation or model that ignores packed position ids) the
path runs padded, says why in its description, and a warning is logged: a script written for
TRL, which accepts the flag and ignores it, still runs.

`LogpsPath.description` says in one line which path was taken and why; the trainer logs it.

Departures from the dispatch this replaces (by batch kind, on every call, in seq2seq.py):
- whether prefix sharing applies is a fixed property of the model, so it is decided here once
  (its regexes over transformers' source were re-run up to four times per DPO step) and no
  module-level record of models already reported is kept;
- the decision is made for the model as given when the path is chosen (the trainer's, before
  accelerate wraps it), so a PEFT wrapper's prompt-learning adapter is seen even when the model
  is later called through DDP;
- a batch of the wrong kind (a `Seq2SeqBatch` for a decoder-only model, a text batch for an
  encoder-decoder one) is refused with the same advice as before; a decoder-only model without a
  ``vision_config`` given image inputs still gets them, through the causal path, as before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from preftune.data.collate import PreferenceBatch, Seq2SeqBatch, VisionPreferenceBatch
from preftune.logps import prefix
from preftune.logps.base import DEFAULT_OPTIONS, NO_REQUEST, LogpsOptions, LogpsRequest, SequenceLogps, unwrap
from preftune.logps.causal import chunked_sequence_logps, plain_sequence_logps, supports_chunked
from preftune.logps.packing import padding_free_blockers
from preftune.logps.seq2seq import CHUNKED_FAMILIES, chunkable, encoder_decoder_logps

CAUSAL, PREFIX_SHARED, VISION, ENCODER_DECODER = "causal", "prefix-shared", "vision", "encoder-decoder"
PADDING_FREE = ", padding-free (one packed row)"

logger = logging.getLogger(__name__)


def is_vision_model(model) -> bool:
    """True for a vision-language model (its config has a ``vision_config``: LLaVA and kin), wrappers included."""
    return getattr(getattr(unwrap(model), "config", None), "vision_config", None) is not None


def is_encoder_decoder_model(model) -> bool:
    """True for a T5/BART-style model (its config says ``is_encoder_decoder``), wrappers included."""
    return bool(getattr(getattr(unwrap(model), "config", None), "is_encoder_decoder", False))


@dataclass(frozen=True)
class LogpsPath:
    """How one model's log-probs are computed; `path(model, batch, request)` computes them.

    `model` is the model chosen for, possibly wrapped since (DDP, FSDP, a disabled adapter).
    """

    kind: str  # CAUSAL, PREFIX_SHARED, VISION or ENCODER_DECODER
    options: LogpsOptions
    chunked: bool  # the LM head in chunks (False: the model's own full logits)
    what: str  # what runs, for the description
    why: str  # why not a faster path ("" when none applies)

    @property
    def description(self) -> str:
        """One line: which path and why, e.g. "log-probs: chunked causal; prefix sharing off: ..."."""
        return f"log-probs: {self.what}" + (f"; {self.why}" if self.why else "")

    def __call__(self, model, batch, request: LogpsRequest = NO_REQUEST) -> SequenceLogps:
        raise NotImplementedError


class CausalPath(LogpsPath):
    """Each row as it is: the chunked LM head or the plain full logits; a batch's image inputs go to the model."""

    def __call__(self, model, batch: PreferenceBatch, request: LogpsRequest = NO_REQUEST) -> SequenceLogps:
        _check_decoder_only_batch(model, batch)
        images = dict(batch.vision_inputs) if isinstance(batch, VisionPreferenceBatch) else None
        if self.options.router_logits:  # MoE: the model returns its aux_loss (a kwarg: VLM wrappers take no config flag)
            images = {**(images or {}), "output_router_logits": True}
        args = (model, batch.input_ids, batch.attention_mask, batch.completion_mask, request)
        if not self.chunked:
            return plain_sequence_logps(*args, model_inputs=images, padding_free=self.options.padding_free)
        return chunked_sequence_logps(*args, options=self.options, model_inputs=images)


class PrefixSharedPath(LogpsPath):
    """Each pair packed into one row, its shared prompt run once (checked for this model when chosen)."""

    def __call__(self, model, batch: PreferenceBatch, request: LogpsRequest = NO_REQUEST) -> SequenceLogps:
        _check_decoder_only_batch(model, batch)
        if isinstance(batch, VisionPreferenceBatch):  # image features enter the prompt: rows cannot share it
            return chunked_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, request,
                                          options=self.options, model_inputs=dict(batch.vision_inputs))
        # Looked up on the module at each call, so that tests can count the calls.
        return prefix.shared_prefix_logps(model, batch, request, options=self.options, check=False)


class EncoderDecoderPath(LogpsPath):
    """The prompt encoded once per pair, the 2B completions decoded (seq2seq.py)."""

    def __call__(self, model, batch: Seq2SeqBatch, request: LogpsRequest = NO_REQUEST) -> SequenceLogps:
        if not isinstance(batch, Seq2SeqBatch):
            raise ValueError(f"{type(unwrap(model)).__name__} is an encoder-decoder model but the batch was collated "
                             "for a decoder-only one; collate with EncoderDecoderCollator (the trainers do when the "
                             "model's config has is_encoder_decoder).")
        return encoder_decoder_logps(model, batch, request, options=self.options)


def _check_decoder_only_batch(model, batch) -> None:
    if isinstance(batch, Seq2SeqBatch):
        raise ValueError(f"{type(unwrap(model)).__name__} is not an encoder-decoder model but the batch was collated "
                         "for one; collate with PreferenceCollator.")


def choose_logps_path(model, options: LogpsOptions = DEFAULT_OPTIONS) -> LogpsPath:
    """The path for `model` under `options` (see the module docstring); call once per model."""
    path = _choose(model, options)
    if options.padding_free and not path.options.padding_free:
        logger.warning("padding_free=True is off for %s: %s; the batch runs padded.", type(unwrap(model)).__name__,
                       path.why)
    return path


def _choose(model, options: LogpsOptions) -> LogpsPath:
    base = unwrap(model)
    if is_encoder_decoder_model(model):
        options, no_packing = _without_padding_free(options, padding_free_blockers(model))
        chunked = options.chunked and chunkable(base)
        if chunked:
            head = "chunked LM head"
        elif not options.chunked:
            head = "the model's own logits (logps_chunked=False)"
        else:
            family = getattr(base.config, "model_type", None)
            head = f"the model's own logits (family {family!r} is not among {sorted(CHUNKED_FAMILIES)})"
        return EncoderDecoderPath(ENCODER_DECODER, options, chunked,
                                  f"encoder-decoder, prompt encoded once per pair, {head}",
                                  "; ".join(filter(None, ["prefix sharing does not apply", no_packing])))
    chunked, plain_why = _causal_chunking(model, options)
    causal = "chunked causal" if chunked else "plain causal (full logits)"
    sharing = chunked and options.prefix_sharing and not is_vision_model(model)
    sharing_blockers = prefix.prefix_sharing_blockers(model) if sharing else []
    if sharing and not sharing_blockers:
        # One row of all pairs with a block-diagonal mask: exact wherever prefix sharing is.
        impl = getattr(base.config, "_attn_implementation", None)
        packed = PADDING_FREE if options.padding_free else ""
        return PrefixSharedPath(PREFIX_SHARED, options, True, f"prefix-shared packed rows ({impl}){packed}", "")
    options, no_packing = _without_padding_free(options, padding_free_blockers(model))
    causal += PADDING_FREE if options.padding_free else ""
    if is_vision_model(model):
        why = "prefix sharing off: image features are merged into the prompt"
        return CausalPath(VISION, options, chunked, f"vision-language, {causal} with the batch's image inputs",
                          "; ".join(filter(None, [plain_why, why, no_packing])))
    if not chunked:
        return CausalPath(CAUSAL, options, False, causal, "; ".join(filter(None, [plain_why, no_packing])))
    why = ("prefix sharing off: logps_prefix_sharing=False" if not options.prefix_sharing
           else "prefix sharing off: " + "; ".join(sharing_blockers))
    return CausalPath(CAUSAL, options, True, causal, "; ".join(filter(None, [why, no_packing])))


def _without_padding_free(options: LogpsOptions, blockers: list[str]) -> tuple[LogpsOptions, str]:
    """`options` with padding_free turned off when it was asked for but would not be exact, and why."""
    if not options.padding_free or not blockers:
        return options, ""
    return replace(options, padding_free=False), "padding_free off: " + "; ".join(blockers)


def _causal_chunking(model, options: LogpsOptions) -> tuple[bool, str]:
    """(whether the decoder-only LM head runs in chunks, why not)."""
    if not options.chunked:
        return False, "logps_chunked=False"
    if not supports_chunked(model):
        return False, "the model has no output embedding or does not accept logits_to_keep"
    return True, ""
