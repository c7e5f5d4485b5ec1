"""Per-sequence log-probs with each group's shared prefix computed once (issues 6 and 17).

A pair's chosen and rejected rows start with the same prompt, and so do the K answers
of a list row. `sequence_logps` runs the prompt once per row; here each group of rows
(`batch.row_groups`: a pair, or a list row's answers) becomes ONE packed row

    [shared prefix | branch 1 | branch 2 | ... | branch K | padding]        (G, L)

run with a custom 4D attention mask: each branch's tokens attend to the prefix and to
earlier tokens of their own branch, never to another branch. Position ids restart at
len(prefix) for every branch, so every token sees exactly the keys, values and
positions it sees in its plain row, and the results equal the plain concatenated
forward (tested, gradients included). A pair runs Σ(P + C_chosen + C_rejected)
tokens instead of Σ 2·(P + C); a list of K answers Σ(P + Σ_k C_k) instead of
Σ K·P + Σ_k C_k — and, trained as its K(K−1)/2 pairs, it would have cost K(K−1)/2
prompts. When prompt tokens are scored (`sequence_rows`, ORPO's NLL) the LM head
saves the same.

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
  with a weight per packed token: K on shared tokens of a group of K rows (each stands
  for a token in every plain row), 1 on branch tokens, 0 on padding. The token-weighted
  means equal those over the plain (N, T) batch, so `aux_loss` equals the plain path's.
- A custom mask disables sdpa's `is_causal` fast path and flash-attention kernels;
  `prefix_sharing_blockers` lists when this path is exact and usable.

With `padding_free` (`LogpsOptions.padding_free`) the group rows are not padded to the
longest: their real tokens are concatenated into ONE row (1, R), R = Σ(P + C_chosen + C_rejected),
and the mask is block-diagonal by group (`SharedPrefixLayout.one_row`). The linear layers then see
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

SHARED, CHOSEN, REJECTED, PAD = 0, 1, 2, -1  # segment ids of packed tokens: branch k of a group is k + 1
_MASK_TENSOR_IMPLS = ("eager", "sdpa")  # attention implementations that take a dense 4D mask as given
_LAYER_TYPES = {"full_attention", "sliding_attention"}
_AUX_CALL = re.compile(
    r"aux_loss\s*=\s*load_balancing_loss_func\(\s*outputs\.router_logits,\s*self\.num_experts,\s*"
    r"self\.num_experts_per_tok,\s*attention_mask,?\s*\)"
)


@dataclass(frozen=True)
class SharedPrefixLayout:
    """G groups of rows that begin alike, packed one group per row:
    [shared prefix | branch 1 | branch 2 | ... | branch K | padding].

    A pair is a group of two (branch 1 = chosen, branch 2 = rejected); a list row of K answers is a
    group of K, its branches in row order. Packed tensors:
    input_ids:    (G, L) long — padding positions repeat the group's first token (never scored, never attended to).
    position_ids: (G, L) long — each token's index in its plain row; 0 on padding.
    segments:     (G, L) long — SHARED, k + 1 for branch k (CHOSEN, REJECTED for a pair), or PAD.
    Per group and per plain row:
    shared_len:   (G,) long — length S of the longest common prefix of the group's rows.
    group_size:   (G,) long — rows in the group.
    row_group:    (N,) long — the group of each plain row.
    row_len:      (N,) long — real tokens in each plain row.
    row_offset:   (N,) long — where a row's branch starts after the prefix: Σ (len − S) of the group's earlier rows.

    One row for all groups (`padding_free`, `pack_shared_prefix(..., one_row=True)`): the rows above,
    padding dropped, concatenated — input_ids, position_ids, segments (1, R) with no PAD, and
    groups:       (1, R) long — the group each token belongs to (None: one group per row).
    group_starts: (G,) long — where each group begins in the row (None: group g begins row g).
    """

    input_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    shared_len: Tensor
    group_size: Tensor
    row_group: Tensor
    row_len: Tensor
    row_offset: Tensor
    groups: Tensor | None = None
    group_starts: Tensor | None = None

    @property
    def real_tokens(self) -> int:
        """Tokens the model computes, padding excluded: Σ_g (S_g + Σ_rows (len − S_g))."""
        return int((self.segments != PAD).sum())

    def packed_index(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Flat index into (G·L) of plain-batch token (row, position)."""
        group = self.row_group[rows]
        in_branch = positions >= self.shared_len[group]
        start = group * self.input_ids.shape[1] if self.group_starts is None else self.group_starts[group]
        return start + positions + torch.where(in_branch, self.row_offset[rows], 0)

    def token_group_size(self) -> Tensor:
        """(G, L) or (1, R): rows of the group each packed token belongs to."""
        if self.groups is not None:
            return self.group_size[self.groups]
        return self.group_size[:, None].expand(self.segments.shape)

    def one_row(self) -> "SharedPrefixLayout":
        """The groups' rows, padding dropped, concatenated into one row (see the class docstring)."""
        real = self.segments != PAD  # (G, L): each row's real tokens come first
        totals = real.sum(1)
        groups = torch.arange(real.shape[0], device=real.device)[:, None].expand(real.shape)
        return SharedPrefixLayout(self.input_ids[real][None], self.position_ids[real][None], self.segments[real][None],
                                  self.shared_len, self.group_size, self.row_group, self.row_len, self.row_offset,
                                  groups=groups[real][None], group_starts=torch.cumsum(totals, 0) - totals)


def pack_shared_prefix(batch, one_row: bool = False) -> SharedPrefixLayout:
    """Pack a right-padded (N, T) batch into one row per group of rows (`batch.row_groups`: a pair batch's
    pairs, a list batch's prompts), or all groups into one row without padding when `one_row`
    (`padding_free`); see `SharedPrefixLayout`. A group's branches follow its rows' order."""
    ids, attn = batch.input_ids, batch.attention_mask.bool()
    row_group = batch.row_groups.to(ids.device)
    n, t = ids.shape
    lengths = attn.sum(1)  # (N,)
    if not torch.equal(attn, torch.arange(t, device=ids.device)[None] < lengths[:, None]):
        raise ValueError("Prefix sharing needs right-padded rows (attention_mask 1…1 0…0); "
                         "collate with padding on the right or turn prefix sharing off.")
    g = int(row_group.max()) + 1 if n else 0
    rows = torch.arange(n, device=ids.device)
    first = torch.full((g,), n, device=ids.device, dtype=torch.long).scatter_reduce(0, row_group, rows, "amin")  # (G,)
    lead = first[row_group]  # (N,) the first row of each row's group
    same = (ids == ids[lead]) & attn & attn[lead]  # (N, T)
    common = same.long().cumprod(1).sum(1)  # (N,) common prefix with the group's first row
    shared_len = lengths.new_full((g,), t).scatter_reduce(0, row_group, common, "amin")  # (G,)
    group_size = torch.zeros_like(shared_len).index_add(0, row_group, torch.ones_like(row_group))
    extra = lengths - shared_len[row_group]  # (N,) branch tokens of each row
    # Exclusive running sum of `extra` over the earlier rows of the same group (rows in order: stable sort).
    order = torch.sort(row_group, stable=True).indices
    sorted_group = row_group[order]
    running = torch.cumsum(extra[order], 0) - extra[order]
    group_base = torch.zeros_like(shared_len).scatter_reduce(0, sorted_group, running, "amin", include_self=False)
    row_offset, rank = torch.empty_like(extra), torch.empty_like(extra)
    row_offset[order] = running - group_base[sorted_group]
    sorted_pos = torch.arange(n, device=ids.device)
    group_first_pos = torch.zeros_like(shared_len).scatter_reduce(0, sorted_group, sorted_pos, "amin", include_self=False)
    rank[order] = sorted_pos - group_first_pos[sorted_group]  # (N,) the row's place k in its group
    total = shared_len + torch.zeros_like(shared_len).index_add(0, row_group, extra)  # (G,)
    width = max(int(total.max()) if g else 1, 1)
    q = torch.arange(t, device=ids.device)[None]  # (1, T)
    in_branch = attn & (q >= shared_len[row_group][:, None])
    in_prefix = (rows == lead)[:, None] & (q < shared_len[row_group][:, None])
    take = in_branch | in_prefix  # (N, T): each packed token comes from exactly one plain token
    dest = (row_group[:, None] * width + q + torch.where(in_branch, row_offset[:, None], 0))[take]
    kind = (rank + 1)[:, None].expand(n, t)  # branch k + 1
    packed_ids = ids[first][:, :1].expand(g, width).clone()  # padding repeats the group's first token
    positions = torch.zeros(g, width, dtype=torch.long, device=ids.device)
    segments = torch.full((g, width), PAD, dtype=torch.long, device=ids.device)
    packed_ids.view(-1)[dest] = ids[take]
    positions.view(-1)[dest] = q.expand(n, t)[take]
    segments.view(-1)[dest] = torch.where(in_branch, kind, SHARED)[take]
    layout = SharedPrefixLayout(packed_ids, positions, segments, shared_len, group_size, row_group, lengths, row_offset)
    return layout.one_row() if one_row else layout


def prefix_sharing_mask(layout: SharedPrefixLayout, window: int | None = None) -> Tensor:
    """Which keys each packed query may attend to, (B, 1, L, L) bool.

    Causal in packed order, restricted to the query's own branch plus the shared
    prefix (of its own group, for a one-row layout: block-diagonal by group); within
    `window` positions when given (kv_pos > q_pos − window). A padding query attends
    to itself only, so no softmax row is empty.
    """
    seg, pos = layout.segments, layout.position_ids
    width = seg.shape[1]
    idx = torch.arange(width, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key ≤ query
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    allowed = causal & ((seg_k == SHARED) | (seg_k == seg_q)) & (seg_k != PAD) & (seg_q != PAD)  # (G, L, L)
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
    longest = int(layout.row_len.max())
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
    """The model's load-balancing loss with shared tokens counted once per row of their group, as in the plain (N, T) batch."""
    if not logits:
        raise RuntimeError(f"no router logits were captured from {type(base).__name__}")
    shared = layout.token_group_size().to(torch.float32)  # a shared token stands for one token of each row
    weights = torch.where(layout.segments == SHARED, shared, torch.where(layout.segments == PAD, 0.0, 1.0))  # (G, L)
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
    returns — same fields, rows (in the batch's order), values and gradients — with each group's
    shared prefix (`batch.row_groups`: a pair's, or a list row's answers') run through the model once.

    request: `LogpsRequest` over the N rows (ORPO's NLL rows, LD-DPO weights (2B, T), WPO).
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
    hidden = out.hidden_states[-1]  # (G, L, H)

    completion, sequence = scored_positions(batch.attention_mask, batch.completion_mask, request.sequence_rows)
    scored = completion | sequence  # (N, T-1); position j-1 scores token j
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
