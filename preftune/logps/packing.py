"""Padding-free rows (`padding_free`): the real tokens of every row of a batch in ONE sequence.

A right-padded (N, T) batch becomes one row (1, R), R = Σ real tokens, with position ids that
restart at 0 for each row. The model is called with that row, the position ids and no
attention mask; transformers (masking_utils.find_packed_sequence_indices) then reads each
place where a position id does not follow its predecessor by 1 as the start of a new sequence
and builds a block-diagonal causal mask (sdpa, eager, flex attention), or flash-attention
runs its variable-length kernel over the same boundaries. Every token sees the same keys,
values and positions as in its padded row, so the log-probs are the padded computation's,
and the decoder layers never compute a pad token.

Each row starts at position 0 and the row before it ends at a position ≥ 0, so consecutive
rows are always told apart (a difference of 1 is impossible at a boundary). Needs right
padding: a left-padded row's positions would not start at 0 in the padded computation.

Where it pays: the linear layers (projections, MLP, LM head input) see R tokens instead of
N·T. Where it does not: sdpa and eager attention build a dense (R, R) mask and compute the
attention over it, O(R²) instead of N·T² — a batch with many rows of similar length can be
slower packed; flash-attention's variable-length kernel has no such cost (benchmarks/README.md).
"""
from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass

import torch

from preftune.logps.base import packed_row_blockers, unwrap

Tensor = torch.Tensor

# Attention implementations that read packed sequences from position_ids when no mask is given.
PACKING_IMPLS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
_LAYER_TYPES = {"full_attention", "sliding_attention"}


@dataclass(frozen=True)
class PackedRows:
    """N right-padded rows as one row.

    input_ids:    (1, R) long — the real tokens of rows 0..N-1, in order.
    position_ids: (1, R) long — each token's index in its own row (restarts at 0 per row).
    starts:       (N,) long — where each row begins in the packed row.
    """

    input_ids: Tensor
    position_ids: Tensor
    starts: Tensor

    def index(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Index into the packed row of padded-batch token (row, position)."""
        return self.starts[rows] + positions

    def model_inputs(self) -> dict[str, Tensor | None]:
        """The model's token inputs: no attention mask, so the position ids delimit the rows."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": None}


def pack_rows(input_ids: Tensor, attention_mask: Tensor) -> PackedRows:
    """Pack a right-padded (N, T) batch into one row (see `PackedRows`)."""
    n, t = input_ids.shape
    real = attention_mask.bool()
    lengths = real.sum(1)  # (N,)
    cols = torch.arange(t, device=input_ids.device)[None]
    if not torch.equal(real, cols < lengths[:, None]):
        raise ValueError("padding_free needs right-padded rows (attention_mask 1…1 0…0); collate with padding on "
                         "the right or set padding_free=False.")
    starts = torch.cumsum(lengths, 0) - lengths
    return PackedRows(input_ids[real][None], cols.expand(n, t)[real][None], starts)


# ------------------------------------------------------------------ when it applies


@functools.lru_cache(maxsize=None)
def _module_source(module_name: str) -> str:
    try:
        return inspect.getsource(sys.modules[module_name])
    except (KeyError, OSError, TypeError):
        return ""


def _mask_from_position_ids(base) -> bool:
    """Whether the model builds its attention mask with masking_utils and hands it the position ids
    (the transformers 5 pattern that detects packed sequences); a model with its own mask code would
    let every row attend to the rows before it."""
    source = _module_source(type(base).__module__)  # a reading of the source: the tests check the families they run
    builds = "masking_utils import" in source and (
        "create_causal_mask" in source or "create_sliding_window_causal_mask" in source)
    return builds and ("position_ids=position_ids" in source or '"position_ids": position_ids' in source)


def padding_free_blockers(model) -> list[str]:
    """Why packing the rows (`pack_rows`) would not be exact for this model (empty list: it is).

    It needs a decoder-only text model whose forward takes position_ids and builds its mask with
    transformers' masking_utils from them, an attention implementation that reads packed position
    ids (eager, sdpa, flex, flash-attention 2/3), only full or sliding-window attention layers
    (not linear-attention or state-space layers), no ALiBi or M-RoPE, no prompt-learning adapter.
    """
    base = unwrap(model)
    config = getattr(base, "config", None)
    if config is None:
        return ["the model has no transformers config"]
    found = packed_row_blockers(model, config)
    if "position_ids" not in inspect.signature(base.forward).parameters:
        found.append("the model's forward takes no position_ids")
    elif not _mask_from_position_ids(base):
        found.append("the model does not build its attention mask from position_ids (transformers' masking_utils)")
    impl = getattr(config, "_attn_implementation", None)
    if impl not in PACKING_IMPLS:
        found.append(f"attention implementation {impl!r} does not read packed position_ids; use one of "
                     f"{', '.join(PACKING_IMPLS)}")
    layer_types = set(getattr(config, "layer_types", None) or ())
    if not layer_types <= _LAYER_TYPES:
        found.append(f"layer types {sorted(layer_types - _LAYER_TYPES)} are not supported")
    return found
