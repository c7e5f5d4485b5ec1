"""TR-DPO: the reference model follows the policy during training.

Gorbatovski et al. 2024 (arXiv 2404.09656), soft update every `ref_model_sync_steps`
optimizer steps: θ_ref ← α·θ_policy + (1 − α)·θ_ref, with α = `ref_model_mixup_alpha`
(α = 1 is the paper's hard update).
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from preftune.logps import unwrap


@torch.no_grad()
def mix_into(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    policy_params = dict(unwrap(policy).named_parameters())
    for name, ref_param in unwrap(reference).named_parameters():
        ref_param.mul_(1.0 - alpha).add_(policy_params[name].detach().to(ref_param.dtype), alpha=alpha)


class SyncReferenceCallback(TrainerCallback):
    def __init__(self, reference: torch.nn.Module, policy: torch.nn.Module, alpha: float, every: int):
        self.reference, self.policy, self.alpha, self.every = reference, policy, alpha, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            mix_into(self.reference, self.policy, self.alpha)
