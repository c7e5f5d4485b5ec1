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
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from preftune.logps.head import LinearHeadLogps, fusable

Tensor = torch.Tensor

# Upper bound on the elements of one chunk of logits (fp32: 256 MiB).
_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class LogpsOptions:
    """How log-probs are computed: the config's `logps_*` flags. Every default is the exact fast path;
    each can be switched off to get the plain computation it is tested against."""

    chunked: bool = True  # LM head on the scored hidden states in chunks, never the full (N, T, V) logits
    chunk_size: int | None = None  # tokens per chunk; None: `chunk_tokens`' default
    fused_head: bool = True  # a plain linear head's hand-written backward (head.py) instead of checkpointing
    prefix_sharing: bool = True  # each pair's prompt run once (prefix.py); needs `chunked`

    @classmethod
    def from_args(cls, args) -> "LogpsOptions":
        return cls(chunked=args.logps_chunked, chunk_size=args.logps_chunk_size,
                   fused_head=args.logps_fused_head, prefix_sharing=args.logps_prefix_sharing)


DEFAULT_OPTIONS = LogpsOptions()


@dataclass(frozen=True)
class SequenceLogps:
    """Sums over the tokens of each row of a concatenated batch, each (N,) with N = 2B."""

    completion_logps: Tensor  # Σ log p over completion tokens
    completion_tokens: Tensor  # number of completion tokens (float)
    sequence_logps: Tensor  # Σ log p over every predicted token (prompt + completion); 0 for rows not asked for
    sequence_tokens: Tensor  # number of those tokens (float)
    completion_logits_sum: Tensor  # Σ over completion tokens of the vocabulary-mean logit (metrics; detached)
    aux_loss: Tensor | None = None  # MoE router auxiliary loss, when the model returns one
    completion_wpo_avg: Tensor | None = None  # WPO: mean over completion tokens of log p − log Σ_v p_v² (detached)
    weighted_completion_logps: Tensor | None = None  # Σ w_t log p over completion tokens, when weights were given

    @property
    def preference_logps(self) -> Tensor:
        """What preference losses compare: the weighted sum when weights were given (LD-DPO), else the plain sum."""
        return self.completion_logps if self.weighted_completion_logps is None else self.weighted_completion_logps

    @property
    def completion_avg_logps(self) -> Tensor:
        return self.completion_logps / self.completion_tokens.clamp(min=1)


def unwrap(model):
    """The transformers model under DDP / PEFT wrappers (for config and the LM head)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def supports_chunked(model) -> bool:
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return head is not None and "logits_to_keep" in inspect.signature(base.forward).parameters


def _scored_positions(attention_mask: Tensor, completion_mask: Tensor, sequence_rows: Tensor | None):
    """Masks over the shifted targets (N, T-1): completion tokens, and every real token of chosen rows."""
    completion = completion_mask[:, 1:].bool()
    sequence = attention_mask[:, 1:].bool()
    if sequence_rows is None:
        sequence = torch.zeros_like(sequence)
    else:
        sequence = sequence & sequence_rows[:, None]
    return completion, sequence


def _token_stats(logits: Tensor, targets: Tensor, softcap: float | None, wpo: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per token: log p(target), the vocabulary-mean logit, and log Σ_v p_v² (WPO only, else 0); each (M,).

    The textbook form over given logits (the plain path); `chunked_token_stats` computes the same values
    with a fused cross-entropy and is tested against it."""
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    with torch.no_grad():
        log_sq_sum = torch.logsumexp(2 * logits, dim=-1) - 2 * lse if wpo else torch.zeros_like(lse)
    return logps, logits.mean(-1).detach(), log_sq_sum


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
                        logits_bias: Tensor | None = None):
    """`_token_stats` over (M, H) hidden states, one chunk of (size, vocab) logits at a time.

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
        logps, mean, log_sq_sum = LinearHeadLogps.apply(h, head.weight, bias, targets, softcap, size, wpo,
                                                        mean_logit is None)
        return logps, (mean if mean_logit is None else mean_logit), log_sq_sum

    def chunk(h_c: Tensor, y_c: Tensor):
        logits = head(h_c).float() if logits_bias is None else (head(h_c) + logits_bias).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logps = -F.cross_entropy(logits, y_c, reduction="none")  # = logits[y] − logsumexp(logits)
        with torch.no_grad():
            mean = logits.mean(-1) if mean_logit is None else None
            log_sq_sum = None
            if wpo:  # log Σ_v p_v² = logsumexp(2·logits) − 2·lse, with lse = logit(y) − log p(y)
                lse = logits.gather(-1, y_c[:, None]).squeeze(-1) - logps
                log_sq_sum = torch.logsumexp(2 * logits, -1) - 2 * lse
        return logps, mean, log_sq_sum

    parts = []
    for start in range(0, h.shape[0], size):
        args = (h[start : start + size], targets[start : start + size])
        parts.append(checkpoint(chunk, *args, use_reentrant=False, early_stop=True)
                     if torch.is_grad_enabled() else chunk(*args))
    if not parts:
        return (h.new_zeros(0, dtype=torch.float32),) * 3
    logps = torch.cat([p[0] for p in parts])
    if mean_logit is None:
        mean_logit = torch.cat([p[1] for p in parts])
    log_sq_sum = torch.cat([p[2] for p in parts]) if wpo else logps.new_zeros(logps.shape)
    return logps, mean_logit, log_sq_sum


def _reduce(stats, rows, is_completion, is_sequence, n: int, aux_loss, weights: Tensor | None) -> SequenceLogps:
    """Scatter per-token values (M,) back to per-row sums (N,)."""
    token_logps, token_logits_mean, log_sq_sum = stats
    zeros = token_logps.new_zeros(n)
    comp = is_completion.to(token_logps.dtype)
    seq = is_sequence.to(token_logps.dtype)
    count = zeros.detach().index_add(0, rows, comp)
    wpo_sum = zeros.detach().index_add(0, rows, (token_logps.detach() - log_sq_sum) * comp)
    return SequenceLogps(
        completion_logps=zeros.index_add(0, rows, token_logps * comp),
        completion_tokens=count,
        sequence_logps=zeros.index_add(0, rows, token_logps * seq),
        sequence_tokens=zeros.detach().index_add(0, rows, seq),
        completion_logits_sum=zeros.detach().index_add(0, rows, token_logits_mean.detach() * comp),
        aux_loss=aux_loss,
        completion_wpo_avg=wpo_sum / count.clamp(min=1),
        weighted_completion_logps=None if weights is None else zeros.index_add(0, rows, token_logps * comp * weights),
    )


def sequence_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    sequence_rows: Tensor | None = None,
    *,
    options: LogpsOptions = DEFAULT_OPTIONS,
    completion_weights: Tensor | None = None,
    wpo: bool = False,
    model_inputs: dict | None = None,
) -> SequenceLogps:
    """Log-probs of the completion (and optionally whole-sequence) tokens of each row.

    input_ids, attention_mask, completion_mask: (N, T); sequence_rows: (N,) bool,
    the rows whose whole sequence is also summed (ORPO's NLL on chosen rows);
    completion_weights: (N, T) float, a weight per completion token in
    `weighted_completion_logps` (LD-DPO), absent when None; wpo: also fill `completion_wpo_avg`;
    model_inputs: more keyword inputs of the model, e.g. a vision-language model's ``pixel_values``;
    options: `chunked`, `chunk_size` and `fused_head` apply here (`prefix_sharing` is `prefix.batch_logps`').
    """
    if not options.chunked or not supports_chunked(model):
        return plain_sequence_logps(model, input_ids, attention_mask, completion_mask, sequence_rows,
                                    completion_weights, wpo, model_inputs=model_inputs)
    base = unwrap(model)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        **(model_inputs or {}),
    )
    hidden = out.hidden_states[-1][:, :-1]  # (N, T-1, H); position j-1 scores token j
    completion, sequence = _scored_positions(attention_mask, completion_mask, sequence_rows)
    scored = completion | sequence  # (N, T-1)
    rows = scored.nonzero()[:, 0]  # (M,)
    h = hidden[scored]  # (M, H)
    targets = input_ids[:, 1:][scored]  # (M,)
    head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    vocab = head.weight.shape[0] if hasattr(head, "weight") else base.config.vocab_size
    size = options.chunk_size or chunk_tokens(vocab, h.shape[-1], h.device)
    stats = chunked_token_stats(head, h, targets, softcap, wpo, size, fused=options.fused_head)
    weights = None if completion_weights is None else completion_weights[:, 1:][scored]
    return _reduce(stats, rows, completion[scored], sequence[scored], input_ids.shape[0],
                   getattr(out, "aux_loss", None), weights)


def plain_sequence_logps(
    model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, sequence_rows: Tensor | None = None,
    completion_weights: Tensor | None = None,
    wpo: bool = False,
    model_inputs: dict | None = None,
) -> SequenceLogps:
    """The textbook computation: full (N, T, V) logits, log-softmax, gather."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **(model_inputs or {}))
    logits = out.logits[:, :-1]  # (N, T-1, V)
    completion, sequence = _scored_positions(attention_mask, completion_mask, sequence_rows)
    scored = completion | sequence
    rows = scored.nonzero()[:, 0]
    stats = _token_stats(logits[scored], input_ids[:, 1:][scored], None, wpo)
    weights = None if completion_weights is None else completion_weights[:, 1:][scored]
    return _reduce(stats, rows, completion[scored], sequence[scored], input_ids.shape[0],
                   getattr(out, "aux_loss", None), weights)
