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

    `ref_*` are zeros when training reference-free. With LD-DPO the four sums are the
    LD-weighted ones (policy and reference alike, as TRL 1.16); `sft_chosen_logps` is then the
    plain (unweighted) sum of the chosen tokens' log-probs, which `sft` uses. None: the same as
    `policy_chosen_logps`.
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor  # number of completion tokens, float
    rejected_lengths: Tensor
    sft_chosen_logps: Tensor | None = None

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
    label_smoothing: float = 0.0  # ε: robust, exo_pair, aot, aot_unpaired (as TRL 1.16)
    discopop_tau: float = 0.05  # τ of discopop
    f_divergence_type: str = "reverse_kl"  # one of F_DIVERGENCES; see f_divergence_scores
    f_alpha_divergence_coef: float = 0.5  # α of alpha_divergence (TRL 1.16's default)

    def __post_init__(self) -> None:
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(f"f_divergence_type={self.f_divergence_type!r} is not one of {F_DIVERGENCES}.")
        if self.f_alpha_divergence_coef <= 0:
            raise ValueError(f"f_alpha_divergence_coef={self.f_alpha_divergence_coef} must be positive.")
        if self.discopop_tau <= 0:
            raise ValueError(f"discopop_tau={self.discopop_tau} must be positive.")


@dataclass(frozen=True)
class DPOLossOutput:
    losses: Tensor  # (B,) per pair (per sorted position for aot / aot_unpaired; sft: the batch value repeated)
    chosen_rewards: Tensor  # (B,) beta * (log πθ(yc|x) - log πref(yc|x)), detached
    rejected_rewards: Tensor  # (B,)


DPOLossFn = Callable[[DPOInputs, DPOParams], DPOLossOutput]


def rewards(x: DPOInputs, beta: float) -> tuple[Tensor, Tensor]:
    """β·log-ratios of chosen and rejected, detached: the implicit DPO rewards, each (B,)."""
    return (beta * x.chosen_logratios).detach(), (beta * x.rejected_logratios).detach()


def output(losses: Tensor, x: DPOInputs, beta: float) -> DPOLossOutput:
    """Every loss type logs the same rewards β·rc, β·rr (summed log-ratios), as TRL 1.16."""
    return DPOLossOutput(losses, *rewards(x, beta))


def smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """-(1-ε)·log σ(z) - ε·log σ(-z), elementwise (aot, aot_unpaired)."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _capped_exp(v: Tensor, cap: float) -> Tensor:
    return torch.exp(v.clamp(max=cap))


# |α - 1| below this is α = 1: alpha_divergence's limit, reverse_kl (TRL 1.16's threshold).
_ALPHA_ONE = 1e-6


def f_divergence_scores(x: DPOInputs, p: DPOParams) -> tuple[Tensor, Tensor]:
    """f-DPO, Wang et al. 2023 (arXiv 2309.16240), Thm. 1 / Table 1: f'(u) of the chosen and of the
    rejected completion, each (B,); the margin is their difference (`f_divergence_logits`).

    u = πθ(y|x) / πref(y|x), so log u_w = rc and log u_l = rr are the log-ratios. As TRL 1.16:
      reverse_kl        f'(u) = log u                     score = r          (standard DPO)
      forward_kl        f'(u) = 1 - 1/u                   score = 1 - exp(-r)
      js_divergence     f'(u) = log(2u/(1+u))             score = log 2 + log σ(r)
      alpha_divergence  f'(u) = (u^(α-1) - 1)/(α-1)       score = (exp((α-1)·r) - 1)/(α-1)
    alpha_divergence at α = 1 (|α - 1| < 1e-6) is its limit, reverse_kl. Constant terms of f'
    cancel in the margin; `ipo` and `sigmoid_norm` divide each score by its completion length.

    Overflow cap: each exponent is clamped at C = log(max finite value of the dtype) - 10
    + min(0, log|α - 1|) before exp, so exp(.)/|α - 1| stays at least e^10 below the largest
    float and β·(margin) cannot become inf (C ≈ 78.7 in float32, ≈ 699.8 in float64 when
    |α - 1| ≥ 1). TRL clamps at 80 (float32/bfloat16) and 11 (float16) and has no cap on
    forward_kl; the values differ only where the cap binds (|r| > 78 nats). Half-precision
    inputs are computed in float32. Where the cap binds the gradient is 0.
    """
    kind = p.f_divergence_type
    rc, rr = x.chosen_logratios, x.rejected_logratios
    alpha = float(p.f_alpha_divergence_coef)
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < _ALPHA_ONE):
        return rc, rr
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(rc), math.log(2.0) + F.logsigmoid(rr)
    dtype = torch.promote_types(rc.dtype, torch.float32)
    rc, rr = rc.to(dtype), rr.to(dtype)
    headroom = math.log(torch.finfo(dtype).max) - _EXP_HEADROOM
    if kind == "forward_kl":
        return 1 - _capped_exp(-rc, headroom), 1 - _capped_exp(-rr, headroom)
    k = alpha - 1.0
    cap = headroom + min(0.0, math.log(abs(k)))
    return (_capped_exp(k * rc, cap) - 1) / k, (_capped_exp(k * rr, cap) - 1) / k


def f_divergence_logits(x: DPOInputs, p: DPOParams) -> Tensor:
    """The f-DPO margin f'(u_w) - f'(u_l), (B,): h = rc - rr for reverse_kl (`f_divergence_scores`)."""
    chosen, rejected = f_divergence_scores(x, p)
    return chosen - rejected


def combine(losses: list[DPOLossOutput], weights: list[float]) -> DPOLossOutput:
    """`loss_type=[...]` with `loss_weights`: Σ_k w_k·L_k per pair; the rewards of the first loss.

    As TRL's multi-loss DPO (used e.g. for MPO: sigmoid + bco_pair + sft).
    """
    if not losses or len(losses) != len(weights):
        raise ValueError(f"combine needs one weight per loss; got {len(losses)} losses and {len(weights)} weights.")
    total = sum(w * out.losses for out, w in zip(losses, weights))
    first = losses[0]
    return DPOLossOutput(total, first.chosen_rewards, first.rejected_rewards)
