"""Objectives: from the policy's (and reference's) sequence log-probs to a loss and metrics.

An objective is resolved once from the config (`objective_from_config`) and called
every step; it splits the concatenated batch (chosen rows first, then rejected
rows), calls the pure loss function and names the metrics exactly as TRL logs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .logps import SequenceLogps
from .losses import DPO_LOSSES, DPOInputs, DPOLossFn, DPOParams, orpo_loss

Tensor = torch.Tensor


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: Tensor  # scalar, mean over pairs
    metrics: dict[str, Tensor]  # name -> (B,) per-pair values, detached


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    b = x.shape[0] // 2
    return x[:b], x[b:]


def _reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
    }


def _logits_metrics(policy: SequenceLogps) -> dict[str, Tensor]:
    """Mean logit over the vocabulary and the completion tokens of each row."""
    mean_logits = policy.completion_logits_sum / policy.completion_tokens.clamp(min=1)
    chosen, rejected = _halves(mean_logits)
    return {"logits/chosen": chosen, "logits/rejected": rejected}


@dataclass(frozen=True)
class ORPOObjective:
    beta: float
    nll_completion_only: bool = False
    needs_reference = False

    def sequence_rows(self, n_rows: int, device) -> Tensor | None:
        """Rows whose whole sequence enters the NLL: the chosen half, unless completion-only."""
        if self.nll_completion_only:
            return None
        return torch.arange(n_rows, device=device) < n_rows // 2

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None = None) -> ObjectiveOutput:
        chosen_avg, rejected_avg = _halves(policy.completion_avg_logps)
        if self.nll_completion_only:
            nll = -chosen_avg
        else:
            seq_logps, _ = _halves(policy.sequence_logps)
            seq_tokens, _ = _halves(policy.sequence_tokens)
            nll = -seq_logps / seq_tokens.clamp(min=1)
        out = orpo_loss(chosen_avg, rejected_avg, nll, self.beta)
        metrics = {
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards),
            "log_odds_chosen": out.log_odds,
            "log_odds_ratio": out.log_sigmoid_log_odds,
            "nll_loss": out.nll,
            "logps/chosen": chosen_avg,
            "logps/rejected": rejected_avg,
            **_logits_metrics(policy),
        }
        return ObjectiveOutput(out.losses.mean(), {k: v.detach() for k, v in metrics.items()})


@dataclass(frozen=True)
class DPOObjective:
    loss_fn: DPOLossFn
    params: DPOParams
    reference_free: bool = False

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def sequence_rows(self, n_rows: int, device) -> Tensor | None:
        return None

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None) -> ObjectiveOutput:
        pc, pr = _halves(policy.completion_logps)
        if ref is None:  # reference-free: an implicit uniform reference
            rc, rr = torch.zeros_like(pc), torch.zeros_like(pr)
        else:
            rc, rr = _halves(ref.completion_logps.detach())
        lc, lr = _halves(policy.completion_tokens)
        out = self.loss_fn(DPOInputs(pc, pr, rc, rr, lc, lr), self.params)
        metrics = {
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards),
            "logps/chosen": pc,
            "logps/rejected": pr,
            **_logits_metrics(policy),
        }
        return ObjectiveOutput(out.losses.mean(), {k: v.detach() for k, v in metrics.items()})


def objective_from_config(args):
    """Resolve the config's flags once into the objective the trainer calls each step."""
    from .config import DPOConfig, ORPOConfig

    if isinstance(args, ORPOConfig):
        return ORPOObjective(beta=args.beta, nll_completion_only=args.nll_completion_only)
    if isinstance(args, DPOConfig):
        params = DPOParams(beta=args.beta, label_smoothing=args.label_smoothing)
        return DPOObjective(DPO_LOSSES[args.loss_type], params, reference_free=args.reference_free)
    raise TypeError(f"no objective for {type(args).__name__}")
