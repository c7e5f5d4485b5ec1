"""What every log-prob path shares: what it is asked, what it returns, and the last step.

- `LogpsOptions`: how to compute (the config's `logps_*` flags), fixed for a run;
- `LogpsRequest`: what an objective needs beyond the completion log-probs, built per batch;
- `SequenceLogps`: the per-row sums every path returns;
- `reduce_to_rows`: per-token values scattered to those per-row sums, the one reduction
  the causal, prefix-shared and encoder-decoder paths all end with;
- `unwrap`: the transformers model under DDP / PEFT wrappers, the package's only such helper.

Nothing here runs a model. Departures from the code this gathers: the encoder-decoder path now
ends with `reduce_to_rows` too (it had its own copy of the reduction), and `unwrap(keep_peft=True)`
replaces the reference providers' own DDP-only unwrapping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class LogpsOptions:
    """How log-probs are computed: the config's `logps_*` flags. Every default is the exact fast path;
    each can be switched off to get the plain computation it is tested against."""

    chunked: bool = True  # LM head on the scored hidden states in chunks, never the full (N, T, V) logits
    chunk_size: int | None = None  # tokens per chunk; None: `causal.chunk_tokens`' default
    fused_head: bool = True  # a plain linear head's hand-written backward (head.py) instead of checkpointing
    prefix_sharing: bool = True  # each pair's prompt run once (prefix.py); needs `chunked`
    router_logits: bool = False  # MoE: ask the model for its router logits, so that it returns its aux_loss
    padding_free: bool = False  # the batch's rows packed into one row, no pad token computed (packing.py)

    @classmethod
    def from_args(cls, args) -> "LogpsOptions":
        return cls(chunked=args.logps_chunked, chunk_size=args.logps_chunk_size,
                   fused_head=args.logps_fused_head, prefix_sharing=args.logps_prefix_sharing,
                   padding_free=getattr(args, "padding_free", False))


DEFAULT_OPTIONS = LogpsOptions()


@dataclass(frozen=True)
class LogpsRequest:
    """What some objectives need beyond the completion log-probs, in one object so that every path
    takes the same three things (the objective builds it: `objectives.logps_request`).

    N = 2B rows, chosen rows first; T = the row length of the batch (the decoder length Tc for an
    encoder-decoder batch).
    """

    sequence_rows: Tensor | None = None  # (N,) bool: rows whose whole sequence is also summed (ORPO's NLL)
    completion_weights: Tensor | None = None  # (N, T) float: a weight per completion token (LD-DPO)
    wpo: bool = False  # also compute WPO's per-token log Σ_v p_v² (`completion_wpo_avg`)
    token_metrics: bool = False  # also each completion token's entropy and top-1 hit (the logged metrics)


NO_REQUEST = LogpsRequest()


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
    completion_entropy_sum: Tensor | None = None  # Σ of the policy's entropy over completion tokens (detached)
    completion_top1: Tensor | None = None  # number of completion tokens whose argmax logit is the target

    @property
    def preference_logps(self) -> Tensor:
        """What preference losses compare: the weighted sum when weights were given (LD-DPO), else the plain sum."""
        return self.completion_logps if self.weighted_completion_logps is None else self.weighted_completion_logps

    @property
    def completion_avg_logps(self) -> Tensor:
        return self.completion_logps / self.completion_tokens.clamp(min=1)


def unwrap(model, *, keep_peft: bool = False):
    """The transformers model under DDP / PEFT wrappers (for its config and LM head).

    keep_peft: stop at a PEFT wrapper (to switch or disable its adapters)."""
    while hasattr(model, "module"):
        model = model.module
    if not keep_peft and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def packed_row_blockers(model, config) -> list[str]:
    """Why rows cannot be packed with a mask of our own making — the reasons prefix sharing and
    padding_free share (each adds its own): an encoder-decoder or vision-language model, ALiBi biases
    (derived from a 2D mask), M-RoPE positions, a prompt-learning PEFT adapter (virtual tokens)."""
    found = []
    if getattr(config, "is_encoder_decoder", False):
        found.append("encoder-decoder models are not supported (the prompt is the encoder's input)")
    if getattr(config, "vision_config", None) is not None:
        found.append("vision-language models are not supported (image features are merged into the rows)")
    if getattr(config, "alibi", False) or getattr(config, "model_type", "") in {"bloom", "mpt"}:
        found.append("ALiBi position biases are derived from a 2D mask")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        found.append("M-RoPE positions are not supported")
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
        found.append("prompt-learning PEFT adapters add virtual tokens to every row")
    return found


def scored_positions(attention_mask: Tensor, completion_mask: Tensor, sequence_rows: Tensor | None):
    """Masks over the shifted targets (N, T-1) of a decoder-only batch: completion tokens, and
    every real token of the rows in `sequence_rows` (none when None)."""
    completion = completion_mask[:, 1:].bool()
    sequence = attention_mask[:, 1:].bool()
    if sequence_rows is None:
        sequence = torch.zeros_like(sequence)
    else:
        sequence = sequence & sequence_rows[:, None]
    return completion, sequence


def reduce_to_rows(stats, rows: Tensor, is_completion: Tensor, is_sequence: Tensor, n: int, aux_loss: Tensor | None,
                   weights: Tensor | None) -> SequenceLogps:
    """Scatter per-token values (M,) back to per-row sums (N,).

    stats: (log p(target), vocabulary-mean logit, log Σ_v p_v², entropy, top-1 hit), each (M,) — the
    third is zeros when WPO was not asked for, so `completion_wpo_avg` is then the mean completion
    log-prob; the last two are zeros when token metrics were not asked for; rows: (M,)
    row of each token; is_completion, is_sequence: (M,) bool, which sums the token enters;
    weights: (M,) LD-DPO weights of the tokens, or None.
    """
    token_logps, token_logits_mean, log_sq_sum, entropy, top1 = stats
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
        completion_entropy_sum=zeros.detach().index_add(0, rows, entropy.detach().to(comp.dtype) * comp),
        completion_top1=zeros.detach().index_add(0, rows, top1.detach().to(comp.dtype) * comp),
    )
