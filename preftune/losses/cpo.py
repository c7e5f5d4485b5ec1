"""The CPO family: reference-free preference losses on the policy's own log-probs.

Every function takes per-pair SUMMED completion log-probs and completion lengths, each (B,),
and returns a `CPOLossOutput`. Which log-probs a loss compares follows TRL 1.16's CPOTrainer:
sigmoid and hinge compare the sums, ipo and simpo (and alphapo, which is simpo) the
length-averaged log-probs. `alpha` ≠ 0 (AlphaPO's reward shape) applies to all of them, on
whichever of the two they compare. The NLL of the chosen answers (`cpo_alpha` × NLL) is added
by the caller: it is one token mean over the batch, not a per-pair term.

Departure from TRL 1.16: AlphaPO's reward (1 - p^-α)/α is computed as (1 - exp(-α·log p))/α,
the same number wherever p = exp(log p) does not underflow; TRL's p^-α is inf (α > 0) or 0
(α < 0) once p rounds to 0 (float32: a summed log-prob below about -103 nats).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class CPOParams:
    beta: float = 0.1
    label_smoothing: float = 0.0  # sigmoid and simpo only (TRL ignores it for hinge and ipo)
    simpo_gamma: float = 0.5  # SimPO's target margin γ
    alpha: float = 0.0  # AlphaPO's reward shape; 0: the plain log-prob reward


@dataclass(frozen=True)
class CPOLossOutput:
    losses: Tensor  # (B,) the preference term of each pair (its mean over pairs is the loss, before cpo_alpha·NLL)
    chosen_logps: Tensor  # (B,) what the loss compared: summed or length-averaged log-probs (logged as logps/*)
    rejected_logps: Tensor
    chosen_rewards: Tensor  # (B,) β·r(y), detached (logged as rewards/*)
    rejected_rewards: Tensor


def alphapo_reward(logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward shape (Gupta et al. 2025, arXiv 2501.03884, eq. 6): r = (1 - p^-α)/α with
    p = exp(logps); α → 0 gives log p, so α = 0 returns `logps` itself."""
    if alpha == 0.0:
        return logps
    return (1 - torch.exp(-alpha * logps)) / alpha


def _smoothed_sigmoid(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1-ε)·log σ(z) - ε·log σ(-z): the conservative (label-smoothed) sigmoid loss of TRL's CPOTrainer."""
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def _finish(losses: Tensor, chosen: Tensor, rejected: Tensor, rc: Tensor, rr: Tensor, beta: float) -> CPOLossOutput:
    return CPOLossOutput(losses, chosen, rejected, (beta * rc).detach(), (beta * rr).detach())


def _averaged(logps: Tensor, lengths: Tensor) -> Tensor:
    return logps / lengths


def cpo_sigmoid_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                     params: CPOParams) -> CPOLossOutput:
    """CPO (Xu et al. 2024, arXiv 2401.08417, eq. 3, its preference term L_prefer):
        h = r(y_w) - r(y_l),  r = log π(y) (summed over the completion; AlphaPO's shape when α ≠ 0)
        L = -(1-ε)·log σ(β·h) - ε·log σ(-β·h)       (ε = label_smoothing, as TRL)
    Rewards: β·r(y)."""
    rc, rr = alphapo_reward(chosen_logps, params.alpha), alphapo_reward(rejected_logps, params.alpha)
    losses = _smoothed_sigmoid(params.beta * (rc - rr), params.label_smoothing)
    return _finish(losses, chosen_logps, rejected_logps, rc, rr, params.beta)


def cpo_hinge_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                   params: CPOParams) -> CPOLossOutput:
    """SLiC's hinge (Zhao et al. 2023, arXiv 2305.10425, eq. 2 with δ = 1) on CPO's reference-free
    margin: L = max(0, 1 - β·h), h = r(y_w) - r(y_l) over summed log-probs. Rewards: β·r(y)."""
    rc, rr = alphapo_reward(chosen_logps, params.alpha), alphapo_reward(rejected_logps, params.alpha)
    losses = torch.relu(1 - params.beta * (rc - rr))
    return _finish(losses, chosen_logps, rejected_logps, rc, rr, params.beta)


def cpo_ipo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                 params: CPOParams) -> CPOLossOutput:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17, τ = β) on CPO's reference-free margin of the
    LENGTH-AVERAGED log-probs (as TRL's CPOTrainer): L = (h - 1/(2β))², h = r(ȳ_w) - r(ȳ_l)."""
    chosen, rejected = _averaged(chosen_logps, chosen_lengths), _averaged(rejected_logps, rejected_lengths)
    rc, rr = alphapo_reward(chosen, params.alpha), alphapo_reward(rejected, params.alpha)
    losses = ((rc - rr) - 1 / (2 * params.beta)) ** 2
    return _finish(losses, chosen, rejected, rc, rr, params.beta)


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
               params: CPOParams) -> CPOLossOutput:
    """SimPO (Meng, Xia & Chen 2024, arXiv 2405.14734, eq. 6):
        L = -log σ(β/|y_w|·log π(y_w) - β/|y_l|·log π(y_l) - γ)
    computed as TRL's CPOTrainer does: h = r(ȳ_w) - r(ȳ_l) - γ/β with ȳ the length-averaged
    log-prob, then the label-smoothed sigmoid of β·h. With α ≠ 0 the rewards are AlphaPO's
    (Gupta et al. 2025, arXiv 2501.03884, eq. 7): r = (1 - p^-α)/α of the averaged p.
    Rewards: β·r(ȳ)."""
    chosen, rejected = _averaged(chosen_logps, chosen_lengths), _averaged(rejected_logps, rejected_lengths)
    rc, rr = alphapo_reward(chosen, params.alpha), alphapo_reward(rejected, params.alpha)
    logits = (rc - rr) - params.simpo_gamma / params.beta
    losses = _smoothed_sigmoid(params.beta * logits, params.label_smoothing)
    return _finish(losses, chosen, rejected, rc, rr, params.beta)


CPOLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, CPOParams], CPOLossOutput]

# loss_type -> loss. "alphapo" is SimPO with AlphaPO's reward (TRL's CPOConfig turns it into
# loss_type="simpo" with cpo_alpha=0; the reward shape comes from `alpha`).
CPO_LOSSES: dict[str, CPOLossFn] = {
    "sigmoid": cpo_sigmoid_loss,
    "hinge": cpo_hinge_loss,
    "ipo": cpo_ipo_loss,
    "simpo": simpo_loss,
    "alphapo": simpo_loss,
}
# The loss types whose loss reads label_smoothing (TRL ignores it, with a warning, for the others).
CPO_LABEL_SMOOTHING_LOSSES = frozenset({"sigmoid", "simpo", "alphapo"})
