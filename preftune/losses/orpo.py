"""ORPO's loss (Hong, Lee & Thorne 2024, arXiv 2403.07691); departures: see `preftune.losses`."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# x = mean log p must stay < 0 for log(1 - e^x) to be finite; this bounds it.
_MAX_AVG_LOGP = -1e-6


def log1mexp(x: Tensor) -> Tensor:
    """Stable log(1 - exp(x)) for x < 0 (Mächler 2012): two branches, no cancellation."""
    x = x.clamp(max=_MAX_AVG_LOGP)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass(frozen=True)
class ORPOLossOutput:
    """Per-pair ORPO terms, each (B,)."""

    losses: Tensor  # nll + beta * ratio_loss, the quantity to minimise (its mean over pairs is the loss)
    nll: Tensor  # NLL of the chosen sequences, as given (a batch token mean: a scalar)
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
    chosen_nll is L_SFT: a scalar (TRL: the token mean over the batch's chosen rows, broadcast
    over the pairs) or one value per pair. λ = 0 leaves plain SFT on the chosen answers.
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
