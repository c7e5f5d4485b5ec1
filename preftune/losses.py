"""Preference losses as pure functions of per-sequence log-probabilities.

Every function takes tensors of shape (B,) — one value per preference pair — and
returns a named container with a per-pair loss (B,) and the implicit rewards (B,).
Nothing here imports transformers: the math is testable alone.

Departures from the papers / from TRL, and why:
- ORPO's NLL term is averaged per pair (each pair's token-mean NLL, then the mean
  over pairs) instead of over all tokens of the batch as in the official code. With
  one pair per batch the two agree; ours makes gradient accumulation exact (4×1
  equals 1×4) and gives every pair equal weight whatever its length.
- log(1 - p) in ORPO's odds is computed as log(-expm1(x)) with x clamped just below
  0, so a completion whose probability rounds to 1 gives a large finite odds, not NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# x = mean log p must stay < 0 for log(1 - e^x) to be finite; this bounds it.
_MAX_AVG_LOGP = -1e-6


def log1mexp(x: Tensor) -> Tensor:
    """Stable log(1 - exp(x)) for x < 0 (Mächler 2012): two branches, no cancellation."""
    x = x.clamp(max=_MAX_AVG_LOGP)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# --------------------------------------------------------------------------- ORPO


@dataclass(frozen=True)
class ORPOLossOutput:
    """Per-pair ORPO terms, each (B,)."""

    losses: Tensor  # nll + beta * ratio_loss, the quantity to minimise
    nll: Tensor  # NLL of the chosen sequence (per-token mean)
    log_odds: Tensor  # log odds(chosen) - log odds(rejected)
    log_sigmoid_log_odds: Tensor  # log σ(log_odds), the term maximised
    chosen_rewards: Tensor  # beta * mean log p(chosen), detached
    rejected_rewards: Tensor  # beta * mean log p(rejected), detached


def orpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    chosen_nll: Tensor,
    beta: float,
) -> ORPOLossOutput:
    """ORPO, Hong, Lee & Thorne 2024 (arXiv 2403.07691), eq. 6-7.

    odds(y|x)  = p / (1 - p)  with  log p = mean token log-prob of the completion
    log_odds   = (a_c - log(1 - e^a_c)) - (a_r - log(1 - e^a_r))
    L_OR       = -log σ(log_odds)
    L          = L_SFT + λ·L_OR      (λ is `beta`, as in TRL)
    Rewards (for logging only) are beta * mean log p, as in TRL's ORPO.
    """
    log_odds = (policy_chosen_avg_logps - log1mexp(policy_chosen_avg_logps)) - (
        policy_rejected_avg_logps - log1mexp(policy_rejected_avg_logps)
    )
    log_sigmoid_log_odds = F.logsigmoid(log_odds)
    losses = chosen_nll - beta * log_sigmoid_log_odds
    return ORPOLossOutput(
        losses=losses,
        nll=chosen_nll,
        log_odds=log_odds,
        log_sigmoid_log_odds=log_sigmoid_log_odds,
        chosen_rewards=(beta * policy_chosen_avg_logps).detach(),
        rejected_rewards=(beta * policy_rejected_avg_logps).detach(),
    )


# ---------------------------------------------------------------------------- DPO


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
        return self.policy_chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> Tensor:
        return self.policy_rejected_logps - self.ref_rejected_logps


@dataclass(frozen=True)
class DPOParams:
    """Scalar settings of the DPO family (see DPOConfig for their meaning)."""

    beta: float = 0.1
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class DPOLossOutput:
    losses: Tensor  # (B,)
    chosen_rewards: Tensor  # (B,) beta * (log πθ(yc|x) - log πref(yc|x)), detached
    rejected_rewards: Tensor  # (B,)


def _rewards(x: DPOInputs, beta: float) -> tuple[Tensor, Tensor]:
    return (beta * x.chosen_logratios).detach(), (beta * x.rejected_logratios).detach()


def sigmoid_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290), eq. 7; cDPO label smoothing ε.

    h = (log πθ(yc) - log πref(yc)) - (log πθ(yr) - log πref(yr))
    L = -(1-ε)·log σ(β·h) - ε·log σ(-β·h)
    """
    h = x.chosen_logratios - x.rejected_logratios
    losses = -(1 - p.label_smoothing) * F.logsigmoid(p.beta * h) - p.label_smoothing * F.logsigmoid(-p.beta * h)
    return DPOLossOutput(losses, *_rewards(x, p.beta))


DPOLossFn = Callable[[DPOInputs, DPOParams], DPOLossOutput]

# loss_type -> function. Variants are added here, one function each.
DPO_LOSSES: dict[str, DPOLossFn] = {
    "sigmoid": sigmoid_loss,
}
