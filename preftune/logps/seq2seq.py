"""Per-sequence log-probs of an encoder-decoder model (T5, BART), the prompt encoded once per pair.

A `Seq2SeqBatch` holds each pair's prompt once (B encoder rows) and its two
completions as decoder targets (2B rows, chosen first). `encoder_decoder_logps`
makes ONE call of the (possibly PEFT/DDP/FSDP-wrapped) model:

    model(input_ids=prompt (B, Tp), attention_mask=(B, Tp),
          decoder_input_ids=shift_right(targets) (2B, Tc), decoder_attention_mask=(2B, Tc))

with a forward pre-hook on the decoder stack that repeats the encoder's hidden
states and mask from B to 2B rows ([h; h]) just before cross-attention. The encoder
therefore runs on B rows, and in backward the two halves' gradients are summed
into h and flow through the encoder once: values and gradients equal those of the
plain computation with each prompt repeated (tested). Everything goes through the
top-level forward, so wrappers that gather or shard parameters there keep working.

The decoder inputs are the model's own shift right of the targets
(`prepare_decoder_input_ids_from_labels`: T5's `_shift_right`, BART's
`shift_tokens_right`), so ``decoder_start_token_id`` comes first. Every real
target token is scored: log p = −cross_entropy of the model's logits (T5's
tied-embedding rescaling and BART's ``final_logits_bias`` included). For the T5 and
BART families (`CHUNKED_FAMILIES`) the full (2B, Tc, V) logits are never formed: a
pre-hook on the LM head keeps the decoder states the head is given (after T5's
rescaling) and hands the head a zero-length slice instead, and the scored states go
through `causal.chunked_token_stats` (chunks, the closed-form head backward) with
BART's ``final_logits_bias`` added to each chunk. Other encoder-decoder families, or
``logps_chunked=False``, use the model's own logits. Prefix sharing does not apply.

`SequenceLogps` is filled as the decoder-only path fills it, by the same `base.reduce_to_rows`:
`sequence_logps` (the ORPO NLL) sums the same decoder tokens as `completion_logps` for the rows
asked for, since the prompt is not predicted by an encoder-decoder model (as TRL); LD-DPO
weights and WPO's statistic are supported; `aux_loss` is None.

Departure: without WPO, `completion_wpo_avg` is the mean completion log-prob, as on the
decoder-only path (it was zeros before the reduction was shared); no objective reads it then.

Which batches come here is decided once per model by `dispatch.choose_logps_path`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preftune.data.collate import Seq2SeqBatch
from preftune.logps.base import (DEFAULT_OPTIONS, NO_REQUEST, LogpsOptions, LogpsRequest, SequenceLogps, reduce_to_rows,
                                 unwrap)
from preftune.logps.causal import chunk_tokens, chunked_token_stats

Tensor = torch.Tensor


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Decoder inputs from targets: start token first, targets shifted by one, -100 as pad."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def decoder_input_ids(model, labels: Tensor) -> Tensor:
    """The model's own decoder inputs for `labels` (-100 on padding)."""
    base = unwrap(model)
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:
        return prepare(labels=labels)
    config = base.config
    start = getattr(config, "decoder_start_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    if start is None or pad is None:
        raise ValueError(f"{type(base).__name__} has no prepare_decoder_input_ids_from_labels and its config lacks "
                         "decoder_start_token_id or pad_token_id, so decoder inputs cannot be built.")
    return shift_right(labels, start, pad)


class _ShareEncoderOutput:
    """Decoder pre-hook: encoder states and mask of B rows -> 2B rows ([x; x]), once per forward."""

    def __init__(self, decoder, n_rows: int):
        self.n_rows = n_rows
        self.fired = 0
        self.handle = decoder.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states")
        if states is None or states.shape[0] * 2 != self.n_rows:
            return None
        kwargs = dict(kwargs)
        kwargs["encoder_hidden_states"] = torch.cat([states, states])
        mask = kwargs.get("encoder_attention_mask")
        if mask is not None and mask.shape[0] * 2 == self.n_rows:
            kwargs["encoder_attention_mask"] = torch.cat([mask, mask])
        self.fired += 1
        return args, kwargs

    def close(self) -> None:
        self.handle.remove()


# Families whose logits are exactly lm_head(decoder states) [+ final_logits_bias] (checked in tests
# against the model's own logits, gradients included); others use the model's full logits.
CHUNKED_FAMILIES = {"t5": None, "mt5": None, "bart": "final_logits_bias", "mbart": "final_logits_bias"}


class _HeadInput:
    """LM-head pre-hook: keep the states the model hands its head, give the head a zero-length
    slice of them, so the model's own (2B, Tc, V) logits are never computed."""

    def __init__(self, head):
        self.states = None
        self.handle = head.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.states = args[0]
        return (args[0].narrow(-2, 0, 0),) + tuple(args[1:])

    def close(self) -> None:
        self.handle.remove()


def chunkable(base) -> bool:
    """Whether this model's LM head can run in chunks here (its family is in `CHUNKED_FAMILIES`)."""
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return getattr(base.config, "model_type", None) in CHUNKED_FAMILIES and head is not None


def _check_supported(model, base) -> None:
    if not getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        raise ValueError(f"{type(base).__name__} is not an encoder-decoder model; collate with PreferenceCollator "
                         "(preftune.logps.choose_logps_path picks the path for a model).")
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
        raise ValueError("prompt-learning PEFT adapters (prompt/prefix tuning) are not supported for encoder-decoder "
                         "models (their virtual tokens assume equal encoder and decoder batches); use LoRA.")


def encoder_decoder_logps(
    model,
    batch: Seq2SeqBatch,
    request: LogpsRequest = NO_REQUEST,
    *,
    options: LogpsOptions = DEFAULT_OPTIONS,
) -> SequenceLogps:
    """Sums over the completion tokens of each of the 2B decoder rows (chosen rows first).

    request: `sequence_rows` (2B,) are the rows whose `sequence_logps` is filled (ORPO's NLL: the
    decoder targets, the same tokens as the completion); `completion_weights` (2B, Tc) per-token
    weights (LD-DPO) for `weighted_completion_logps`; `wpo` fills `completion_wpo_avg`.
    options: `chunked`, `chunk_size` and `fused_head` apply to the families in `CHUNKED_FAMILIES`.
    """
    base = unwrap(model)
    _check_supported(model, base)
    targets, mask = batch.completion_input_ids, batch.completion_mask.bool()
    n = targets.shape[0]
    decoder = base.get_decoder()
    if decoder is base:
        raise ValueError(f"{type(base).__name__}.get_decoder() returns the model itself; its decoder stack cannot be found.")
    share = _ShareEncoderOutput(decoder, n)
    head = base.get_output_embeddings()
    capture = _HeadInput(head) if options.chunked and chunkable(base) else None
    try:
        out = model(
            input_ids=batch.prompt_input_ids,
            attention_mask=batch.prompt_attention_mask,
            decoder_input_ids=decoder_input_ids(model, targets.masked_fill(~mask, -100)),
            decoder_attention_mask=batch.completion_mask,
            use_cache=False,
        )
    finally:
        share.close()
        if capture is not None:
            capture.close()
    if not share.fired:
        raise RuntimeError(f"{type(base).__name__}'s decoder was not given encoder_hidden_states by keyword, so the "
                           "encoder output could not be shared between chosen and rejected rows.")

    rows = mask.nonzero()[:, 0]  # (M,)
    y = targets[mask]
    if capture is not None:  # the head in chunks over the scored decoder states
        if capture.states is None:
            raise RuntimeError(f"{type(base).__name__} did not call its output embeddings; run with "
                               "logps_chunked=False to use the model's own logits.")
        h = capture.states[mask]  # (M, H)
        bias_name = CHUNKED_FAMILIES[base.config.model_type]
        bias = getattr(base, bias_name).reshape(-1) if bias_name else None
        size = options.chunk_size or chunk_tokens(head.weight.shape[0], h.shape[-1], h.device)
        stats = chunked_token_stats(head, h, y, None, request.wpo, size, fused=options.fused_head, logits_bias=bias,
                                    metrics=request.token_metrics)
    else:
        logits = out.logits[mask].float()  # (M, V): the scored positions only
        token_logps = -F.cross_entropy(logits, y, reduction="none")  # = logit(y) − logsumexp
        with torch.no_grad():
            log_sq_sum = entropy = top1 = torch.zeros_like(token_logps)
            lse = logits.gather(-1, y[:, None]).squeeze(-1) - token_logps
            if request.wpo:  # log Σ_v p_v² = logsumexp(2·logits) − 2·lse
                log_sq_sum = torch.logsumexp(2 * logits, -1) - 2 * lse
            if request.token_metrics:
                entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
                top1 = (logits.argmax(-1) == y).to(lse.dtype)
            stats = (token_logps, logits.mean(-1), log_sq_sum, entropy, top1)

    # Every scored decoder token is a completion token; the rows asked for sum the same tokens again
    # as their whole sequence (the prompt is the encoder's input, not predicted).
    if request.sequence_rows is None:
        in_sequence = torch.zeros_like(y, dtype=torch.bool)
    else:
        in_sequence = request.sequence_rows.to(device=y.device, dtype=torch.bool)[rows]
    weights = None if request.completion_weights is None else request.completion_weights[mask]
    return reduce_to_rows(stats, rows, torch.ones_like(y, dtype=torch.bool), in_sequence, n, None, weights)
