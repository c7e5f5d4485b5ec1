"""`KTOObjective`: from the policy's and reference's log-probs of a KTO batch to the loss and TRL 1.16's metrics.

A KTO batch is laid out as pairs (`preftune.data.unpaired`): rows [0, B) are each row's prompt +
completion, rows [B, 2B) the same prompt + its KL completion (a neighbour's completion). The
loss is `preftune.losses.kto_loss` over rows [0, B); z₀ comes from rows [B, 2B) (`local_kl`,
then the trainer's mean across processes).

Every metric is a (numerator, denominator) pair, summed over processes and over the steps
since the last log, as TRL 1.16's KTOTrainer computes them for one step:
rewards/chosen|rejected (Σ β·r / number of desirable|undesirable rows), logps/chosen|rejected
(Σ summed completion log-prob / rows), logits/chosen|rejected (Σ vocabulary-mean logit over
completion tokens / tokens), entropy (over every row's completion tokens), kl (z₀).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.logps import LogpsRequest, SequenceLogps
from preftune.losses import kl_estimate, kto_loss
from preftune.train.objective_output import ObjectiveOutput

Tensor = torch.Tensor


def _rows(x: Tensor) -> Tensor:
    return x[: x.shape[0] // 2]


def _kl_rows(x: Tensor) -> Tensor:
    return x[x.shape[0] // 2:]


@dataclass(frozen=True)
class KTOObjective:
    beta: float
    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    needs_reference = True
    use_weighting = False

    @classmethod
    def from_config(cls, args) -> "KTOObjective":
        return cls(beta=args.beta, loss_type=args.loss_type, desirable_weight=args.desirable_weight,
                   undesirable_weight=args.undesirable_weight)

    @property
    def calculate_kl(self) -> bool:
        return self.loss_type != "apo_zero_unpaired"

    def logps_request(self, completion_mask: Tensor) -> LogpsRequest:
        return LogpsRequest(token_metrics=True)

    def reference_request(self, completion_mask: Tensor) -> LogpsRequest:
        return LogpsRequest()

    def local_kl(self, policy: SequenceLogps, ref: SequenceLogps) -> Tensor:
        """This process's part of z₀: the mean (policy - reference) log-ratio of the KL rows, detached."""
        return kl_estimate(_kl_rows(policy.completion_logps).detach(), _kl_rows(ref.completion_logps).detach())

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps, labels: Tensor, kl: Tensor) -> ObjectiveOutput:
        """labels: (B,) bool (True: desirable); kl: z₀ (clamped, detached; 0 for apo_zero_unpaired)."""
        logps = _rows(policy.completion_logps)
        out = kto_loss(logps, _rows(ref.completion_logps).detach(), labels, kl, self.beta, self.loss_type,
                       self.desirable_weight, self.undesirable_weight)
        good = labels.to(torch.bool)
        bad = ~good
        n_good, n_bad = good.sum().float(), bad.sum().float()
        tokens = _rows(policy.completion_tokens)
        logits = _rows(policy.completion_logits_sum)
        lp = logps.detach()
        metrics = {
            "rewards/chosen": (out.rewards[good].sum(), n_good),
            "rewards/rejected": (out.rewards[bad].sum(), n_bad),
            "logps/chosen": (lp[good].sum(), n_good),
            "logps/rejected": (lp[bad].sum(), n_bad),
            "logits/chosen": (logits[good].sum(), tokens[good].sum()),
            "logits/rejected": (logits[bad].sum(), tokens[bad].sum()),
            "kl": (torch.as_tensor(kl, dtype=torch.float32, device=lp.device).reshape(()), torch.ones((), device=lp.device)),
        }
        if policy.completion_entropy_sum is not None:
            metrics["entropy"] = (_rows(policy.completion_entropy_sum).sum(), tokens.sum())
        token_metrics = {k: (n.detach(), d.detach()) for k, (n, d) in metrics.items()}
        return ObjectiveOutput(out.losses.mean(), {}, token_metrics)
