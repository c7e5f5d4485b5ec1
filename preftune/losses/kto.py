"""KTO's loss (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
arXiv 2402.01306) and the unpaired APO-zero loss (D'Oosterlinck et al. 2024, arXiv 2408.06266).

Unpaired data: each row is one completion y for a prompt x with a label, desirable (D) or
undesirable (U). With r(x, y) = log π_θ(y|x) - log π_ref(y|x) (the completion's summed log-ratio):

    kto (paper eq. 7-8):
        z₀     = max(0, mean over mismatched (x_i, y_j) of r(x_i, y_j)), detached
        D rows: loss = λ_D · (1 - σ(β·(r - z₀)))
        U rows: loss = λ_U · (1 - σ(β·(z₀ - r)))

    apo_zero_unpaired (APO paper eq. 7, unpaired): no z₀
        D rows: loss = λ_D · (1 - σ(β·r))
        U rows: loss = λ_U · σ(β·r)

The step's loss is the mean of these per-row losses over every row of the batch (D and U
together: TRL 1.16's ``torch.cat(...).nanmean()``). Rewards are β·r, detached.

z₀ is estimated by the caller (`kl_estimate` here, then a mean across processes, then the clamp):
TRL 1.16 takes (policy - reference) summed log-probs of the mismatched pairs, their mean over
the local batch, the mean of those over processes, clamped at 0 — `kl_reference_point`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclass(frozen=True)
class KTOLossOutput:
    """Per-row terms, each (N,) in the rows' order (desirable and undesirable rows mixed)."""

    losses: Tensor  # weighted per-row losses; the step's loss is their mean
    rewards: Tensor  # β · (policy - reference) log-ratio, detached


def kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """The local part of z₀: mean over the batch's mismatched rows of (policy - reference) summed
    log-probs, detached. (M,) -> scalar."""
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kl_reference_point(local_means: Tensor) -> Tensor:
    """z₀ from each process's `kl_estimate` (a (P,) tensor, P processes): their mean, clamped at 0."""
    return local_means.mean().clamp(min=0)


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor | float, beta: float,
             loss_type: str = "kto", desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> KTOLossOutput:
    """Per-row KTO (or apo_zero_unpaired) losses; see the module docstring for the formulas.

    policy_logps, ref_logps: (N,) summed completion log-probs; desirable: (N,) bool labels;
    kl: z₀ (already clamped and detached; ignored by apo_zero_unpaired).
    """
    if loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {KTO_LOSS_TYPES}")
    desirable = desirable.to(torch.bool)
    logratios = policy_logps - ref_logps
    if loss_type == "kto":
        kl = torch.as_tensor(kl, dtype=logratios.dtype, device=logratios.device)
        good = 1 - torch.sigmoid(beta * (logratios - kl))
        bad = 1 - torch.sigmoid(beta * (kl - logratios))
    else:
        good = 1 - torch.sigmoid(beta * logratios)
        bad = torch.sigmoid(beta * logratios)
    losses = torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
    return KTOLossOutput(losses, beta * logratios.detach())


def weighting_rule(n_desirable: int, n_undesirable: int, desirable_weight: float,
                   undesirable_weight: float) -> tuple[float, bool]:
    """The KTO paper's rule for imbalanced data (section 4.2, eq. 8):
    λ_D·n_D / (λ_U·n_U) should lie in [1, 4/3]. Returns (that ratio, whether it is inside)."""
    ratio = (desirable_weight * max(n_desirable, 1)) / (undesirable_weight * max(n_undesirable, 1))
    return ratio, 1.0 <= ratio <= 4.0 / 3.0 + 1e-12
