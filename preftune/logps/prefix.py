"""Per-sequence log-probs with each pair's shared prefix computed once (issue 6).

A pair's chosen and rejected rows start with the same prompt. `sequence_logps` runs
the prompt twice (once in each row); here each pair becomes ONE packed row

    [shared prefix | chosen branch | rejected branch | padding]        (B, L)

run with a custom 4D attention mask: prefix and chosen tokens attend causally as
usual; rejected tokens attend to the prefix and to earlier rejected tokens, never to
the chosen branch. Position ids restart at len(prefix) for the rejected branch, so
every token sees exactly the keys, values and positions it sees in its plain row,
and the results equal the plain concatenated forward (tested, gradients included).
The model runs once over Σ(P + C_chosen + C_rejected) tokens instead of
Σ 2·(P + C), for the decoder layers and, when prompt tokens are scored
(`sequence_rows`, ORPO's NLL), for the LM head as well.

transformers 5.23 hands a 4D `attention_mask` to the attention layers unchanged
(masking_utils._preprocess_mask_arguments), as a boolean mask for sdpa and as an
additive float mask for eager attention. Models whose layers mix full and
sliding-window attention accept a dict {layer type: mask}; sliding windows are
applied in the mask (`kv_pos > q_pos - window`, as masking_utils does).

Departures from the plain path, and why:
- The shared prefix is the longest common prefix of the two rows' tokens, which
  contains the prompt and may run into the completions when they begin alike.
  Sharing more is still exact: a causal model's state at token j depends only on
  tokens 0..j. A (position, target) pair scored by both rows is computed once and
  counted towards each row that asks for it.
- MoE auxiliary loss: the model's own `load_balancing_loss_func` expects a 2D mask,
  so the model is called with `output_router_logits=False`, the router logits are
  captured by forward hooks on the router modules, and the same function is called
  with a weight per packed token: 2 on shared tokens (each stands for a token in
  both plain rows), 1 on branch tokens, 0 on padding. The token-weighted means
  equal those over the plain (2B, T) batch, so `aux_loss` equals the plain path's.
- A custom mask disables sdpa's `is_causal` fast path and flash-attention kernels;
  `prefix_sharing_blockers` lists when this path is exact and usable.

With `padding_free` (`LogpsOptions.padding_free`) the B pair rows are not padded to the
longest: their real tokens are concatenated into ONE row (1, R), R = Σ(P + C_chosen + C_rejected),
and the mask is block-diagonal by pair (`SharedPrefixLayout.one_row`). The linear layers then see
no padding at all; sdpa/eager attention computes over (R, R) instead of B·L² (see
`packing`'s docstring for when that pays).

Whether it is used for a model is decided once, by `dispatch.choose_logps_path`, which then
calls `shared_prefix_logps(..., check=False)` every step.
"""
from __future__ import annotations

import functools
import inspect
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from preftune.logps.base import (DEFAULT_OPTIONS, NO_REQUEST, LogpsOptions, LogpsRequest, SequenceLogps,
                                 packed_row_blockers, reduce_to_rows, scored_positions, unwrap)
from preftune.logps.causal import head_token_stats, supports_chunked

if TYPE_CHECKING:  # only the batch's fields are used here
    from preftune.data.collate import PreferenceBatch

Tensor = torch.Tensor

SHARED, CHOSEN, REJECTED, PAD = 0, 1, 2, 3  # segment ids of packed tokens
_MASK_TENSOR_IMPLS = ("eager", "sdpa")  # attention implementations that take a dense 4D mask as given
_LAYER_TYPES = {"full_attention", "sliding_attention"}
_AUX_CALL = re.compile(
    r"aux_loss\s*=\s*load_balancing_loss_func\(\s*outputs\.router_logits,\s*self\.num_experts,\s*"
    r"self\.num_experts_per_tok,\s*attention_mask,?\s*\)"
)


@dataclass(frozen=True)
class SharedPrefixLayout:
    """B pairs packed one per row: [shared prefix | chosen branch | rejected branch | padding].

    input_ids:    (B, L) long — padding positions repeat the row's first token (never scored, never attended to).
    position_ids: (B, L) long — each token's index in its plain row; 0 on padding.
    segments:     (B, L) long — SHARED, CHOSEN, REJECTED or PAD.
    shared_len:   (B,) long — length S of the common prefix of the pair's two rows.
    chosen_len, rejected_len: (B,) long — real tokens in the plain chosen / rejected row.

    One row for all pairs (`padding_free`, `pack_shared_prefix(..., one_row=True)`): the pairs'
    rows above, padding dropped, concatenated — input_ids, position_ids, segments (1, R) with no
    PAD, and
    groups:       (1, R) long — the pair each token belongs to (None: one pair per row).
    pair_starts:  (B,) long — where each pair begins in the row (None: pair b begins row b).
    """

    input_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    shared_len: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
    groups: Tensor | None = None
    pair_starts: Tensor | None = None

    @property
    def real_tokens(self) -> int:
        """Tokens the model computes, padding excluded: Σ(S + (C_chosen − S) + (C_rejected − S))."""
        return int((self.segments != PAD).sum())

    def packed_index(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Flat index into (B·L) of plain-batch token (row, position); rows in [0, 2B)."""
        b, width = self.shared_len.shape[0], self.input_ids.shape[1]
        pair = rows % b
        in_rejected_branch = (rows >= b) & (positions >= self.shared_len[pair])
        offset = torch.where(in_rejected_branch, self.chosen_len[pair] - self.shared_len[pair], 0)
        start = pair * width if self.pair_starts is None else self.pair_starts[pair]
        return start + positions + offset

    def one_row(self) -> "SharedPrefixLayout":
        """The pairs' rows, padding dropped, concatenated into one row (see the class docstring)."""
        real = self.segments != PAD  # (B, L): each row's real tokens come first
        totals = real.sum(1)
        pairs = torch.arange(real.shape[0], device=real.device)[:, None].expand(real.shape)
        return SharedPrefixLayout(self.input_ids[real][None], self.position_ids[real][None], self.segments[real][None],
                                  self.shared_len, self.chosen_len, self.rejected_len,
                                  groups=pairs[real][None], pair_starts=torch.cumsum(totals, 0) - totals)


def pack_shared_prefix(batch: PreferenceBatch, one_row: bool = False) -> SharedPrefixLayout:
    """Pack a right-padded (2B, T) batch into one row per pair, or all pairs into one row without
    padding when `one_row` (`padding_free`); see `SharedPrefixLayout`."""
    ids, attn = batch.input_ids, batch.attention_mask.bool()
    n, t = ids.shape
    b = n // 2
    lengths = attn.sum(1)  # (2B,)
    if not torch.equal(attn, torch.arange(t, device=ids.device)[None] < lengths[:, None]):
        raise ValueError("Prefix sharing needs right-padded rows (attention_mask 1…1 0…0); "
                         "collate with padding on the right or turn prefix sharing off.")
    chosen_len, rejected_len = lengths[:b], lengths[b:]
    same = (ids[:b] == ids[b:]) & attn[:b] & attn[b:]  # (B, T)
    shared_len = same.long().cumprod(1).sum(1)  # (B,) longest common prefix
    total = chosen_len + rejected_len - shared_len  # (B,)
    width = max(int(total.max()), 1)
    q = torch.arange(width, device=ids.device)[None]  # (1, L)
    in_chosen = q < chosen_len[:, None]  # prefix or chosen branch: same index as in the chosen row
    in_rejected = ~in_chosen & (q < total[:, None])
    col = torch.where(in_chosen, q, torch.where(in_rejected, q - (chosen_len - shared_len)[:, None], 0))
    pair = torch.arange(b, device=ids.device)[:, None]
    row = torch.where(in_rejected, pair + b, pair)
    segments = torch.full_like(col, PAD)
    segments = torch.where(in_rejected, REJECTED, torch.where(in_chosen, CHOSEN, segments))
    segments = torch.where(q < shared_len[:, None], SHARED, segments)
    layout = SharedPrefixLayout(ids[row, col], col, segments, shared_len, chosen_len, rejected_len)
    return layout.one_row() if one_row else layout


def prefix_sharing_mask(layout: SharedPrefixLayout, window: int | None = None) -> Tensor:
    """Which keys each packed query may attend to, (B, 1, L, L) bool.

    Causal in packed order, restricted to the query's own branch plus the shared
    prefix (of its own pair, for a one-row layout: block-diagonal by pair); within
    `window` positions when given (kv_pos > q_pos − window). A padding query attends
    to itself only, so no softmax row is empty.
    """
    seg, pos = layout.segments, layout.position_ids
    width = seg.shape[1]
    idx = torch.arange(width, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key ≤ query
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    allowed = causal & ((seg_k == SHARED) | (seg_k == seg_q)) & (seg_k != PAD) & (seg_q != PAD)  # (B, L, L)
    if layout.groups is not None:
        allowed = allowed & (layout.groups[:, :, None] == layout.groups[:, None, :])
    if window is not None:
        allowed = allowed & (pos[:, None, :] > pos[:, :, None] - window)
    allowed = allowed | ((seg_q == PAD) & torch.eye(width, dtype=torch.bool, device=seg.device))
    return allowed[:, None]


# ------------------------------------------------------------------ when it applies


def _layer_windows(config) -> dict[str, int | None]:
    """Attention window of each layer type the model uses (None: full attention)."""
    window = getattr(config, "sliding_window", None) or None  # 0 means no window in some configs (Qwen2-MoE)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # Mistral-style: one mask for all layers, windowed when the config sets one
        return {"full_attention": window}
    return {kind: (window if kind == "sliding_attention" else None) for kind in set(layer_types)}


@functools.lru_cache(maxsize=None)
def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _takes_mask_dict(base) -> bool:
    """Whether the model's forward accepts {layer type: mask} (the pattern transformers' hybrid models share)."""
    return "causal_mask_mapping := attention_mask" in _source(sys.modules[type(base).__module__])


def _router_recorder(base):
    recorder = getattr(type(base), "_can_record_outputs", None) or {}
    recorder = recorder.get("router_logits")
    return recorder if getattr(recorder, "target_class", None) is not None else None


def prefix_sharing_blockers(model, router_logits: bool = False) -> list[str]:
    """Why `shared_prefix_logps` is not exact or usable for this model (empty list: it is).

    It needs: a decoder-only causal LM with an output embedding and `logits_to_keep`
    (the chunked LM head) and `position_ids` (rotary or learned absolute positions);
    eager or sdpa attention (flash and flex attention do not take a dense 4D mask);
    only full and sliding-window attention layers, and a mask dict when both occur;
    no ALiBi or M-RoPE; no prompt-learning PEFT (virtual tokens change the mask); for
    MoE models returning router logits, the standard `load_balancing_loss_func` call.
    Gradient checkpointing is fine (no KV cache is used).
    """
    base = unwrap(model)
    config = getattr(base, "config", None)
    if config is None:
        return ["the model has no transformers config"]
    found = packed_row_blockers(model, config)
    if not getattr(config, "is_causal", True):
        found.append("the model's attention is not causal")
    if not supports_chunked(model):
        found.append("the model has no output embedding or does not accept logits_to_keep")
    if "position_ids" not in inspect.signature(base.forward).parameters:
        found.append("the model's forward takes no position_ids")
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _MASK_TENSOR_IMPLS:
        found.append(f"attention implementation {impl!r} does not take a custom 4D mask; use 'sdpa' or 'eager'")
    windows = _layer_windows(config)
    if not set(windows) <= _LAYER_TYPES:
        found.append(f"layer types {sorted(set(windows) - _LAYER_TYPES)} are not supported")
    elif len(set(windows.values())) > 1 and not _takes_mask_dict(base):
        found.append("the model mixes full and sliding attention but takes no per-layer-type mask dict")
    if router_logits or getattr(config, "output_router_logits", False):  # router_logits: LogpsOptions'
        known_call = _AUX_CALL.search(_source(type(base).forward))
        if _router_recorder(base) is None or not known_call or not hasattr(base, "num_experts_per_tok"):
            found.append("the model's MoE auxiliary loss cannot be reproduced for a packed batch")
    return found


def supports_prefix_sharing(model) -> bool:
    """True when `shared_prefix_logps` is exact and usable for `model` (see `prefix_sharing_blockers`)."""
    return not prefix_sharing_blockers(model)


# ------------------------------------------------------------------ the computation


def _attention_masks(base, layout: SharedPrefixLayout, dtype: torch.dtype):
    """The mask argument for the model: one 4D mask, or a dict by layer type when windows differ."""
    longest = int(torch.maximum(layout.chosen_len, layout.rejected_len).max())
    # A window at least as long as every row masks nothing: build one mask for all layers.
    windows = {kind: (w if w is not None and w < longest else None) for kind, w in _layer_windows(base.config).items()}
    cache: dict[int | None, Tensor] = {}
    for w in windows.values():
        if w not in cache:
            allowed = prefix_sharing_mask(layout, w)
            if base.config._attn_implementation == "eager":  # eager adds the mask to the scores
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min)
            cache[w] = allowed
    if len(cache) == 1:
        return next(iter(cache.values()))
    return {kind: cache[w] for kind, w in windows.items()}


class _RouterCapture:
    """Collect router logits from forward hooks during one forward pass (MoE aux loss)."""

    def __init__(self, base):
        target = _router_recorder(base)
        self.index = target.index
        self.logits: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in base.modules()
                        if isinstance(m, target.target_class)]

    def _hook(self, module, args, output):
        value = output[self.index] if isinstance(output, tuple) else output
        if value is not None:
            self.logits.append(value)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _moe_aux_loss(base, logits: list[Tensor], layout: SharedPrefixLayout) -> Tensor:
    """The model's load-balancing loss with shared tokens counted twice, as in the plain (2B, T) batch."""
    if not logits:
        raise RuntimeError(f"no router logits were captured from {type(base).__name__}")
    weights = torch.where(layout.segments == SHARED, 2.0, torch.where(layout.segments == PAD, 0.0, 1.0))  # (B, L)
    loss_fn = sys.modules[type(base).__module__].load_balancing_loss_func
    return loss_fn(tuple(logits), base.num_experts, base.num_experts_per_tok, weights)


def shared_prefix_logps(
    model,
    batch: PreferenceBatch,
    request: LogpsRequest = NO_REQUEST,
    *,
    options: LogpsOptions = DEFAULT_OPTIONS,
    check: bool = True,
) -> SequenceLogps:
    """What `sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, request)`
    returns — same fields, rows (chosen rows, then rejected rows), values and gradients —
    with each pair's shared prefix run through the model once.

    request: `LogpsRequest` over the 2B rows (ORPO's NLL rows, LD-DPO weights (2B, T), WPO).
    check: raise ValueError when the model is not supported (`prefix_sharing_blockers`); False
    only for a caller that has checked this model already (the dispatcher, once per model).
    """
    if check:
        blockers = prefix_sharing_blockers(model)
        if blockers:
            raise ValueError(f"Prefix sharing is not available for this model: {'; '.join(blockers)}; "
                             "use sequence_logps instead.")
    base = unwrap(model)
    ids = batch.input_ids
    layout = pack_shared_prefix(batch, one_row=options.padding_free)
    masks = _attention_masks(base, layout, base.get_input_embeddings().weight.dtype)
    want_aux = bool(options.router_logits or getattr(base.config, "output_router_logits", False))
    extra = {"output_router_logits": False} if want_aux else {}
    capture = _RouterCapture(base) if want_aux else None
    try:
        out = model(
            input_ids=layout.input_ids,
            attention_mask=masks,
            position_ids=layout.position_ids,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=ids.device),
            **extra,
        )
    finally:
        if capture is not None:
            capture.close()  # before backward: recomputation under checkpointing must not record again
    aux_loss = _moe_aux_loss(base, capture.logits, layout) if want_aux else None
    hidden = out.hidden_states[-1]  # (B, L, H)

    completion, sequence = scored_positions(batch.attention_mask, batch.completion_mask, request.sequence_rows)
    scored = completion | sequence  # (2B, T-1); position j-1 scores token j
    rows, pos = scored.nonzero().unbind(1)  # (M,) each, in the plain path's order
    targets = ids[:, 1:][scored]  # (M,)
    source = layout.packed_index(rows, pos)  # (M,) flat index into (B·L) of the state that scores the token
    # A (state, target) pair asked for by both rows (a shared token) is computed once.
    span = int(targets.max()) + 1 if targets.numel() else 1
    unique, inverse = torch.unique(source * span + targets, return_inverse=True)  # (U,), (M,)
    h = hidden.reshape(-1, hidden.shape[-1])[unique // span]  # (U, H)
    stats = head_token_stats(base, h, unique % span, options, request.wpo, request.token_metrics)
    stats = tuple(s[inverse] for s in stats)  # (M,) each: back to one entry per (row, token)
    weights = None if request.completion_weights is None else request.completion_weights[:, 1:][scored]
    return reduce_to_rows(stats, rows, completion[scored], sequence[scored], ids.shape[0], aux_loss, weights)
