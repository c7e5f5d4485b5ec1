"""What every objective returns (its own module so that each family's objective file, e.g.
`kto_objective`, and the dispatching `objectives.objective_from_config` import it without a cycle)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: Tensor  # scalar
    metrics: dict[str, Tensor]  # name -> (B,) per-pair values, detached; logged as the mean over pairs
    # name -> (numerator, denominator), scalars, detached; logged as Σ numerators / Σ denominators
    # (token-weighted means, as TRL's entropy, mean_token_accuracy, logits/*)
    token_metrics: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
