"""`CPOConfig`: TRL 1.16's experimental CPOConfig (field names and defaults), on `PreferenceConfig`.

A file of its own so that train/config.py stays small; import it from here (or lazily from
`preftune`). Departures from TRL 1.16, and why:
- label_smoothing > 0 with loss_type hinge or ipo is an error (TRL warns and ignores it), as
  DPOConfig does for a label_smoothing no loss reads; label_smoothing must be in [0, 0.5].
- beta must be positive (SimPO divides by it), cpo_alpha and simpo_gamma ≥ 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from preftune.errors import ConfigError
from preftune.train.config import PreferenceConfig

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")


@dataclass
class CPOConfig(PreferenceConfig):
    """CPO (Xu et al. 2024), SimPO (Meng et al. 2024), AlphaPO (Gupta et al. 2025): no reference model."""

    beta: float = field(
        default=0.1, metadata={"help": "β: scale of the reward margin inside the loss (IPO's τ for loss_type ipo)."}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "ε in [0, 0.5]: probability that a preference label is flipped "
                               "(loss_type sigmoid, simpo and alphapo)."}
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "sigmoid (CPO), hinge (SLiC), ipo, simpo (SimPO) or alphapo (SimPO with AlphaPO's reward "
                  "shape `alpha`; sets loss_type simpo and cpo_alpha 0, as TRL). sigmoid and hinge compare summed "
                  "log-probs, ipo and simpo length-averaged ones.",
                  "choices": list(CPO_LOSS_TYPES)},
    )
    cpo_alpha: float = field(
        default=1.0, metadata={"help": "Weight of the NLL of the chosen completions (CPO's behaviour-cloning "
                               "term; 0: pure SimPO)."}
    )
    simpo_gamma: float = field(
        default=0.5, metadata={"help": "SimPO's target reward margin γ (loss_type simpo / alphapo only)."}
    )
    alpha: float = field(
        default=0.0, metadata={"help": "AlphaPO's reward shape: r = (1 - p^-alpha)/alpha instead of log p "
                               "(every loss_type; 0: log p)."}
    )

    def _validate_preference_fields(self) -> None:
        if self.loss_type == "alphapo":  # TRL's shorthand: SimPO without the NLL term (the shape comes from alpha)
            self.loss_type, self.cpo_alpha = "simpo", 0.0
        super()._validate_preference_fields()
        if self.loss_type not in CPO_LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r} is not known; choose one of: {', '.join(CPO_LOSS_TYPES)}.")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5].")
        if self.label_smoothing > 0 and self.loss_type in ("hinge", "ipo"):
            raise ConfigError(f"label_smoothing={self.label_smoothing} has no effect on loss_type {self.loss_type}; it "
                              "is used by sigmoid and simpo — remove it or change loss_type.")
        if self.cpo_alpha < 0:
            raise ConfigError(f"cpo_alpha={self.cpo_alpha} must be ≥ 0 (0: no NLL term).")
        if self.simpo_gamma < 0:
            raise ConfigError(f"simpo_gamma={self.simpo_gamma} must be ≥ 0.")
