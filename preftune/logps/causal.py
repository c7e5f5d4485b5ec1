"""Per-sequence log-probabilities of a causal LM, without full-vocabulary logits.

The model is run once on the concatenated batch (chosen rows, then rejected rows)
with `logits_to_keep` set to no position, so its own LM head computes nothing; we
take the final hidden states, keep only the positions that are scored, and apply
the LM head to them in chunks. Each chunk is checkpointed, so at most one chunk of
(tokens, vocab) logits exists at a time, in the forward and in the backward.
`plain_sequence_logps` is the textbook computation, kept for models that do not
accept `logits_to_keep` and as the reference the chunked path is tested against.

Per chunk the label's log-prob is `-cross_entropy(logits, labels)`, whose fused
log-softmax backward is about 1.8x faster on CPU than differentiating
`gather(logits) - logsumexp(logits)`; WPO's log Σ p² is computed only when asked,
and only in the forward (the checkpoint's recomputation stops before it).
The vocabulary-mean logit (the logits/* metrics) of a plain `nn.Linear` head without
softcapping is h·mean(W) + mean(b), one vector product instead of a pass over the logits.

Position t of a row predicts token t+1, so token j is scored from hidden state j-1.

With `LogpsOptions.padding_free` both paths run the N rows as one packed row without padding
(`packing.pack_rows`) and read the states (logits) of the scored tokens from it.

Departures from the textbook computation (`plain_sequence_logps`), and why: the LM head runs
outside the model, on the scored positions only (memory); the vocabulary-mean logit of a plain
linear head comes from mean(W) (one product instead of a pass over the logits). Both are exact,
and tested against the plain path, gradients included.

`sequence_logps` (the documented entry point) looks at the model on every call to pick chunked
or plain; the trainer instead uses the path `dispatch.choose_logps_path` chose once, which calls
`chunked_sequence_logps` or `plain_sequence_logps` directly.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from preftune.logps.base import (DEFAULT_OPTIONS, NO_REQUEST, LogpsOptions, LogpsRequest, SequenceLogps,
                                 reduce_to_rows, scored_positions, unwrap)
from preftune.logps.head import LinearHeadLogps, fusable
from preftune.logps.packing import pack_rows, padding_free_blockers

Tensor = torch.Tensor

# Upper bound on the elements of one chunk of logits (fp32: 256 MiB).
_CHUNK_ELEMENTS = 1 << 26


def supports_chunked(model) -> bool:
    """Whether the model has an output embedding and its forward takes `logits_to_keep` (the chunked path)."""
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return head is not None and "logits_to_keep" in inspect.signature(base.forward).parameters


def _token_stats(logits: Tensor, targets: Tensor, softcap: float | None, wpo: bool,
                 metrics: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per token, each (M,): log p(target), the vocabulary-mean logit, log Σ_v p_v² (WPO only, else 0),
    the entropy -Σ_v p_v log p_v and whether the target is the argmax (1.0 / 0.0; these two only
    with `metrics`, else 0). All but log p are detached.

    The textbook form over given logits (the plain path); `chunked_token_stats` computes the same values
    with a fused cross-entropy and is tested against it."""
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    with torch.no_grad():
        log_sq_sum = torch.logsumexp(2 * logits, dim=-1) - 2 * lse if wpo else torch.zeros_like(lse)
        entropy, top1 = _entropy_top1(logits, lse, targets) if metrics else (torch.zeros_like(lse),) * 2
    return logps, logits.mean(-1).detach(), log_sq_sum, entropy, top1


def _entropy_top1(logits: Tensor, lse: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(M, V) logits (fp32) and their logsumexp -> entropy lse - Σ_v p_v z_v, and argmax == target as
    a float (argmax takes the first maximum, as TRL's is_top1). No gradient; logits are not changed."""
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return entropy, (logits.argmax(-1) == targets).to(lse.dtype)


def chunk_tokens(vocab: int, hidden: int, device: torch.device | str) -> int:
    """Default tokens per chunk: at most `_CHUNK_ELEMENTS` logits, at least 64 tokens; on CPU, also
    at most `hidden` tokens.

    On CPU the fastest chunk measured (forward + backward of the head; vocabularies 8k-128k, hidden
    256-1024; benchmarks/README.md) held about as many tokens as the hidden size, whatever the
    vocabulary: smaller chunks re-read the (vocab, hidden) weight for fewer tokens, larger ones
    make (tokens, vocab) temporaries that miss the caches and are page-faulted in afresh (glibc
    mmaps every block over 32 MiB). At hidden 256 and a 32k vocabulary, 256-token chunks (31 MiB
    of fp32 logits) instead of 2,097 make the head ~1.3x faster and its live memory ~130 MiB
    instead of ~750 MiB. Other devices (CUDA) keep the larger chunks their matmuls want; not
    measured on a GPU yet.
    """
    tokens = _CHUNK_ELEMENTS // vocab
    if torch.device(device).type == "cpu":
        tokens = min(tokens, hidden)
    return max(64, tokens)


def _vocab_mean_logit(head, h: Tensor, softcap, logits_bias: Tensor | None = None) -> Tensor | None:
    """Per token (M,), the mean over the vocabulary of head(h), detached, without computing the logits.

    For a plain `nn.Linear` head, mean_v(h·W_v + b_v) = h·mean(W, 0) + mean(b) exactly. None when
    that does not hold or cannot be seen to hold: softcapping (tanh is not linear), a head of
    another class (LoRA, quantized or sharded layers), hooks or a replaced forward on the head.
    """
    if (softcap or type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks
            or "forward" in vars(head) or not head.weight.is_floating_point()):
        return None
    with torch.no_grad():
        mean = h.detach().float() @ head.weight.mean(0, dtype=torch.float32)
        if head.bias is not None:
            mean = mean + head.bias.mean(dtype=torch.float32)
        if logits_bias is not None:
            mean = mean + logits_bias.mean(dtype=torch.float32)
    return mean


def chunked_token_stats(head, h: Tensor, targets: Tensor, softcap, wpo: bool, size: int, fused: bool = True,
                        logits_bias: Tensor | None = None, metrics: bool = False):
    """`_token_stats` over (M, H) hidden states, one chunk of (size, vocab) logits at a time.

    metrics: also each token's entropy and top-1 hit (the entropy / mean_token_accuracy metrics),
    from the chunk's logits while they exist: no second pass over the logits.

    logits_bias: (V,), added to the head's output by the model outside the head (BART's
    `final_logits_bias`); None for most models.

    A plain linear head goes through `head.LinearHeadLogps` (a hand-written backward) when
    `fused`; any other head, or `fused=False`, checkpoints each chunk: only its inputs are
    kept, its logits are rebuilt in backward. The recomputation stops once the tensors
    backward needs are rebuilt (`early_stop`), so the detached statistics computed after the
    log-probs are not computed again.
    """
    mean_logit = _vocab_mean_logit(head, h, softcap, logits_bias)  # None: taken from each chunk's logits
    if fused and fusable(head, h):
        bias = head.bias if logits_bias is None else logits_bias if head.bias is None else head.bias + logits_bias
        logps, mean, log_sq_sum, entropy, top1 = LinearHeadLogps.apply(h, head.weight, bias, targets, softcap, size,
                                                                       wpo, mean_logit is None, metrics)
        return logps, (mean if mean_logit is None else mean_logit), log_sq_sum, entropy, top1

    def chunk(h_c: Tensor, y_c: Tensor):
        logits = head(h_c).float() if logits_bias is None else (head(h_c) + logits_bias).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logps = -F.cross_entropy(logits, y_c, reduction="none")  # = logits[y] − logsumexp(logits)
        with torch.no_grad():
            mean = logits.mean(-1) if mean_logit is None else None
            log_sq_sum = entropy = top1 = None
            lse = logits.gather(-1, y_c[:, None]).squeeze(-1) - logps  # lse = logit(y) − log p(y)
            if wpo:  # log Σ_v p_v² = logsumexp(2·logits) − 2·lse
                log_sq_sum = torch.logsumexp(2 * logits, -1) - 2 * lse
            if metrics:
                entropy, top1 = _entropy_top1(logits, lse, y_c)
        return logps, mean, log_sq_sum, entropy, top1

    parts = []
    for start in range(0, h.shape[0], size):
        args = (h[start : start + size], targets[start : start + size])
        parts.append(checkpoint(chunk, *args, use_reentrant=False, early_stop=True)
                     if torch.is_grad_enabled() else chunk(*args))
    if not parts:
        return (h.new_zeros(0, dtype=torch.float32),) * 5
    logps = torch.cat([p[0] for p in parts])
    if mean_logit is None:
        mean_logit = torch.cat([p[1] for p in parts])

    def joined(i: int, asked: bool) -> Tensor:
        return torch.cat([p[i] for p in parts]) if asked else logps.new_zeros(logps.shape)

    return logps, mean_logit, joined(2, wpo), joined(3, metrics), joined(4, metrics)



def head_token_stats(base, h: Tensor, targets: Tensor, options: LogpsOptions, wpo: bool, metrics: bool = False):
    """`chunked_token_stats` through a decoder-only model's own LM head: its softcapping, its vocabulary,
    the chunk size of `options` (or `chunk_tokens`' default). Shared by the causal and prefix-shared paths."""
    head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    vocab = head.weight.shape[0] if hasattr(head, "weight") else base.config.vocab_size
    size = options.chunk_size or chunk_tokens(vocab, h.shape[-1], h.device)
    return chunked_token_stats(head, h, targets, softcap, wpo, size, fused=options.fused_head, metrics=metrics)


def sequence_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    request: LogpsRequest = NO_REQUEST,
    *,
    options: LogpsOptions = DEFAULT_OPTIONS,
    model_inputs: dict | None = None,
) -> SequenceLogps:
    """Log-probs of the completion (and optionally whole-sequence) tokens of each row.

    input_ids, attention_mask, completion_mask: (N, T); request: `LogpsRequest` (ORPO's NLL rows,
    LD-DPO weights, WPO); model_inputs: more keyword inputs of the model, e.g. a vision-language
    model's ``pixel_values``; options: `chunked`, `chunk_size`, `fused_head` and `padding_free` apply
    here (`prefix_sharing` is the dispatcher's: `dispatch.choose_logps_path`); `padding_free` raises
    ValueError for a model it is not exact for (`packing.padding_free_blockers`).

    Chunked when `options.chunked` and the model supports it, else plain. This looks at the model on
    every call; the trainer uses the path `dispatch.choose_logps_path` chose once instead.
    """
    if options.padding_free:
        blockers = padding_free_blockers(model)
        if blockers:
            raise ValueError(f"padding_free is not exact for this model: {'; '.join(blockers)}.")
    if not options.chunked or not supports_chunked(model):
        return plain_sequence_logps(model, input_ids, attention_mask, completion_mask, request,
                                    model_inputs=model_inputs, padding_free=options.padding_free)
    return chunked_sequence_logps(model, input_ids, attention_mask, completion_mask, request, options=options,
                                  model_inputs=model_inputs)


def chunked_sequence_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    request: LogpsRequest = NO_REQUEST,
    *,
    options: LogpsOptions = DEFAULT_OPTIONS,
    model_inputs: dict | None = None,
) -> SequenceLogps:
    """`sequence_logps` for a model known to support it (`supports_chunked`): the LM head in chunks.

    With `options.padding_free` (and no image inputs) the rows run as one packed row (`packing`)."""
    packed = pack_rows(input_ids, attention_mask) if options.padding_free and not _image_inputs(model_inputs) else None
    tokens = packed.model_inputs() if packed else {"input_ids": input_ids, "attention_mask": attention_mask}
    out = model(
        **tokens,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        **(model_inputs or {}),
    )
    completion, sequence = scored_positions(attention_mask, completion_mask, request.sequence_rows)
    scored = completion | sequence  # (N, T-1); position j-1 scores token j
    rows, pos = scored.nonzero().unbind(1)  # (M,) each
    if packed:
        h = out.hidden_states[-1][0, packed.index(rows, pos)]  # (M, H)
    else:
        h = out.hidden_states[-1][:, :-1][scored]  # (M, H)
    stats = head_token_stats(unwrap(model), h, input_ids[:, 1:][scored], options, request.wpo,
                             request.token_metrics)
    weights = None if request.completion_weights is None else request.completion_weights[:, 1:][scored]
    return reduce_to_rows(stats, rows, completion[scored], sequence[scored], input_ids.shape[0],
                          getattr(out, "aux_loss", None), weights)


def _image_inputs(model_inputs: dict | None) -> bool:
    """Inputs beyond the tokens that packing cannot carry (a VLM's images); asking an MoE model for its
    router logits is not one."""
    return bool(set(model_inputs or {}) - {"output_router_logits"})


def plain_sequence_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    request: LogpsRequest = NO_REQUEST,
    *,
    model_inputs: dict | None = None,
    padding_free: bool = False,
) -> SequenceLogps:
    """The textbook computation: full (N, T, V) logits, log-softmax, gather.

    padding_free: run the rows as one packed row (`packing`; not with image inputs)."""
    packed = pack_rows(input_ids, attention_mask) if padding_free and not _image_inputs(model_inputs) else None
    tokens = packed.model_inputs() if packed else {"input_ids": input_ids, "attention_mask": attention_mask}
    out = model(**tokens, use_cache=False, **(model_inputs or {}))
    completion, sequence = scored_positions(attention_mask, completion_mask, request.sequence_rows)
    scored = completion | sequence
    rows, pos = scored.nonzero().unbind(1)
    logits = out.logits[0, packed.index(rows, pos)] if packed else out.logits[:, :-1][scored]  # (M, V)
    stats = _token_stats(logits, input_ids[:, 1:][scored], None, request.wpo, request.token_metrics)
    weights = None if request.completion_weights is None else request.completion_weights[:, 1:][scored]
    return reduce_to_rows(stats, rows, completion[scored], sequence[scored], input_ids.shape[0],
                          getattr(out, "aux_loss", None), weights)
