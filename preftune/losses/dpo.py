"""The DPO family's containers and shared pieces: inputs, settings, output, f-divergences, combine.

The loss functions themselves are in `dpo_variants`; departures from the papers and
from TRL are listed in `preftune.losses`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# f-DPO divergences (Wang et al. 2023, arXiv 2309.16240), in the order users see them.
F_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Exponents fed to exp() stop this many nats below log(largest finite value of the dtype):
# e^10 ≈ 2.2e4 of room left for β·h and the sums taken after it, so nothing becomes inf.
_EXP_HEADROOM = 10.0


@dataclass(frozen=True)
class DPOInputs:
    """Summed completion log-probs and completion lengths for B pairs, each (B,).

    `ref_*` are zeros when training reference-free.
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor  # number of completion tokens, float
    rejected_lengths: Tensor

    @property
    def chosen_logratios(self) -> Tensor:
        """log πθ(yc|x) - log πref(yc|x), (B,)."""
        return self.policy_chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> Tensor:
        """log πθ(yr|x) - log πref(yr|x), (B,)."""
        return self.policy_rejected_logps - self.ref_rejected_logps

    @property
    def logits(self) -> Tensor:
        """h = (log πθ(yc) - log πθ(yr)) - (log πref(yc) - log πref(yr)), (B,)."""
        return (self.policy_chosen_logps - self.policy_rejected_logps) - (
            self.ref_chosen_logps - self.ref_rejected_logps
        )


@dataclass(frozen=True)
class DPOParams:
    """Scalar settings of the DPO family (see DPOConfig for their meaning and defaults).

    The config validates users' values; the checks here only catch programming errors.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0  # ε: cDPO, robust, exo_pair, aot, aot_pair
    discopop_tau: float = 0.05  # τ of discopop
    f_divergence_type: str = "reverse_kl"  # one of F_DIVERGENCES; see f_divergence_logits
    f_alpha_divergence_coef: float = 1.0  # α of alpha_divergence
    bco_delta: float = 0.0  # δ of bco_pair: running mean of the rewards, kept by the caller

    def __post_init__(self) -> None:
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(f"f_divergence_type={self.f_divergence_type!r} is not one of {F_DIVERGENCES}.")
        if self.f_alpha_divergence_coef <= 0:
            raise ValueError(f"f_alpha_divergence_coef={self.f_alpha_divergence_coef} must be positive.")
        if self.discopop_tau <= 0:
            raise ValueError(f"discopop_tau={self.discopop_tau} must be positive.")


@dataclass(frozen=True)
class DPOLossOutput:
    losses: Tensor  # (B,) per pair (per sorted position for aot / aot_pair)
    chosen_rewards: Tensor  # (B,) beta * (log πθ(yc|x) - log πref(yc|x)), detached
    rejected_rewards: Tensor  # (B,)


DPOLossFn = Callable[[DPOInputs, DPOParams], DPOLossOutput]


def rewards(x: DPOInputs, beta: float) -> tuple[Tensor, Tensor]:
    """β·log-ratios of chosen and rejected, detached: the implicit DPO rewards, each (B,)."""
    return (beta * x.chosen_logratios).detach(), (beta * x.rejected_logratios).detach()


def output(losses: Tensor, x: DPOInputs, beta: float) -> DPOLossOutput:
    return DPOLossOutput(losses, *rewards(x, beta))


def smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """cDPO's -(1-ε)·log σ(z) - ε·log σ(-z), elementwise."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _capped_exp(v: Tensor, cap: float) -> Tensor:
    return torch.exp(v.clamp(max=cap))


def f_divergence_logits(x: DPOInputs, p: DPOParams) -> Tensor:
    """f-DPO, Wang et al. 2023 (arXiv 2309.16240), Thm. 1 / Table 1: f'(u_w) - f'(u_l), (B,).

    u = πθ(y|x) / πref(y|x), so log u_w = rc and log u_l = rr are the log-ratios of the
    chosen (w) and rejected (l) completions. The DPO margin h is replaced by:
      reverse_kl        f'(u) = log u + 1        h = rc - rr (standard DPO)
      forward_kl        f'(u) = -1/u             u_l^-1 - u_w^-1 = exp(-rr) - exp(-rc)
      js_divergence     f'(u) = log(2u/(1+u))    h - (softplus(rc) - softplus(rr))
      alpha_divergence  f'(u) = (1 - u^-α)/α     (exp(-α·rr) - exp(-α·rc)) / α
    (forward_kl is alpha_divergence at α = 1.)

    Overflow cap: each exponent is clamped at C = log(max finite value) - 10 + min(0, log α)
    before exp, so every exponential term after the division by α is at most e^-10 of the
    largest float (C ≈ 78.7 in float32, ≈ 699.8 in float64 for α ≥ 1). Half-precision inputs
    are computed in float32 (float16 would cap at e^1). Where the cap binds the gradient is 0,
    as TRL's cap_exp. js_divergence needs no cap: softplus is stable.
    """
    kind = p.f_divergence_type
    if kind == "reverse_kl":
        return x.logits
    rc, rr = x.chosen_logratios, x.rejected_logratios
    if kind == "js_divergence":
        return x.logits - (F.softplus(rc) - F.softplus(rr))
    alpha = 1.0 if kind == "forward_kl" else float(p.f_alpha_divergence_coef)
    dtype = torch.promote_types(rc.dtype, torch.float32)
    rc, rr = rc.to(dtype), rr.to(dtype)
    cap = math.log(torch.finfo(dtype).max) - _EXP_HEADROOM + min(0.0, math.log(alpha))
    return (_capped_exp(-alpha * rr, cap) - _capped_exp(-alpha * rc, cap)) / alpha


def combine(losses: list[DPOLossOutput], weights: list[float]) -> DPOLossOutput:
    """`loss_type=[...]` with `loss_weights`: Σ_k w_k·L_k per pair; the rewards of the first loss.

    As TRL's multi-loss DPO (used e.g. for MPO: sigmoid + bco_pair + sft).
    """
    if not losses or len(losses) != len(weights):
        raise ValueError(f"combine needs one weight per loss; got {len(losses)} losses and {len(weights)} weights.")
    total = sum(w * out.losses for out, w in zip(losses, weights))
    first = losses[0]
    return DPOLossOutput(total, first.chosen_rewards, first.rejected_rewards)
