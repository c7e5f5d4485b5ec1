"""Where DPO's reference log-probs come from.

Chosen once, when the trainer is built (`reference_for`), never re-decided per step:
- `ModelReference`: a separate frozen model (the one given, or a copy of the policy);
- `AdapterDisabledReference`: the policy itself with its PEFT adapter switched off —
  the base weights are the reference, so it costs no second copy of the model.
ORPO and reference-free DPO use no provider (None).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .logps import SequenceLogps, sequence_logps


@dataclass
class ModelReference:
    model: torch.nn.Module
    chunked: bool = True
    chunk_size: int | None = None
    kind = "frozen model"

    def logps(self, policy_model, input_ids, attention_mask, completion_mask) -> SequenceLogps:
        with torch.no_grad():
            return sequence_logps(self.model, input_ids, attention_mask, completion_mask,
                                  chunked=self.chunked, chunk_size=self.chunk_size)


@dataclass
class AdapterDisabledReference:
    chunked: bool = True
    chunk_size: int | None = None
    kind = "policy with its adapter disabled"

    def logps(self, policy_model, input_ids, attention_mask, completion_mask) -> SequenceLogps:
        peft_model = _unwrap_ddp(policy_model)
        with torch.no_grad(), peft_model.disable_adapter():
            return sequence_logps(policy_model, input_ids, attention_mask, completion_mask,
                                  chunked=self.chunked, chunk_size=self.chunk_size)


def _unwrap_ddp(model):
    while hasattr(model, "module"):  # DDP and friends
        model = model.module
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent, frozen, eval-mode copy of the policy's current weights."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reference_for(args, model, ref_model, is_peft: bool):
    """The provider this run uses, from the config and what the user passed."""
    if not getattr(args, "loss_type", None) or getattr(args, "reference_free", False):
        return None
    chunk = dict(chunked=args.logps_chunked, chunk_size=args.logps_chunk_size)
    if ref_model is not None:
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        return ModelReference(ref_model, **chunk)
    if is_peft:
        return AdapterDisabledReference(**chunk)
    return ModelReference(frozen_copy(model), **chunk)
