"""`DPOConfig`: DPO (Rafailov et al. 2023) and its family of losses (TRL 1.16's field names and defaults),
on `config.ReferenceConfig` (where the reference comes from, shared with KTO). Its own module, as
`cpo_config` and `kto_config`: the loss fields and their checks are DPO's alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from preftune.errors import ConfigError
from preftune.train.config import ReferenceConfig

EXO_DEFAULT_EPSILON = 1e-3  # EXO needs ε > 0; TRL's default for exo_pair


@dataclass
class DPOConfig(ReferenceConfig):
    """DPO (Rafailov et al. 2023) and its family of losses, against a reference model."""

    beta: float = field(
        default=0.1, metadata={"help": "β in DPO: higher stays closer to the reference model."}
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": "DPO-family loss, or several (combined with loss_weights); see README for the list."},
    )
    loss_weights: Optional[list[float]] = field(
        default=None, metadata={"help": "One weight per loss_type when several are given (default: all 1)."}
    )
    label_smoothing: Optional[float] = field(
        default=None,
        metadata={"help": "ε: probability that a preference label is flipped (robust, exo_pair, aot, aot_unpaired; "
                  "as TRL 1.16, not sigmoid). Default 0, and 1e-3 for exo_pair."},
    )
    rpo_alpha: Optional[float] = field(
        default=None, metadata={"help": "RPO: add rpo_alpha × NLL of the chosen completion (paper: 1.0)."}
    )
    use_weighting: bool = field(default=False, metadata={"help": "WPO: weight each pair by its on-policy probability."})
    ld_alpha: Optional[float] = field(
        default=None,
        metadata={"help": "LD-DPO: weight in [0, 1] of the tokens of the longer answer beyond the shorter's length."},
    )
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP temperature τ."})
    f_divergence_type: str = field(
        default="reverse_kl",
        metadata={"help": "f-DPO divergence: reverse_kl (standard DPO), forward_kl, js_divergence, alpha_divergence."},
    )
    f_alpha_divergence_coef: float = field(
        default=0.5, metadata={"help": "α of alpha_divergence, f'(u) = (u^(α-1) - 1)/(α-1); α = 1 is reverse_kl."})
    reference_free: bool = field(
        default=False, metadata={"help": "Ignore the reference model (an implicit uniform reference)."}
    )
    pad_token: Optional[str] = field(
        default=None,
        metadata={"help": "Token used for padding (set as the tokenizer's pad token; it must be in the vocabulary). "
                  "Default: the tokenizer's pad token, else its EOS token."},
    )

    @property
    def loss_types(self) -> list[str]:
        return list(self.loss_type)

    def _validate_preference_fields(self) -> None:
        super()._validate_preference_fields()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self._validate_losses()
        self._validate_reference()

    def _validate_losses(self) -> None:
        from preftune.losses import DPO_LOSSES, F_DIVERGENCE_LOSSES, F_DIVERGENCES, LABEL_SMOOTHING_LOSSES, LIST_LOSSES

        unknown = [t for t in self.loss_type if t not in DPO_LOSSES and t not in LIST_LOSSES]
        if not self.loss_type or unknown:
            bad = unknown[0] if unknown else ""
            raise ConfigError(f"loss_type={bad!r} is not known; choose one of: {', '.join(sorted([*DPO_LOSSES, *LIST_LOSSES]))}.")
        self._validate_listwise()
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(
                f"loss_weights has {len(self.loss_weights)} values but loss_type has {len(self.loss_type)}; "
                "give one weight per loss type."
            )
        eps = self.label_smoothing
        if eps is None:
            self.label_smoothing = EXO_DEFAULT_EPSILON if "exo_pair" in self.loss_type else 0.0
        elif not 0.0 <= eps <= 0.5:
            raise ConfigError(f"label_smoothing={eps} must be in [0, 0.5].")
        elif eps > 0 and not set(self.loss_type) & LABEL_SMOOTHING_LOSSES:
            raise ConfigError(
                f"label_smoothing={eps} has no effect on loss_type {', '.join(self.loss_type)}; it is used by "
                f"{', '.join(sorted(LABEL_SMOOTHING_LOSSES))} — remove it or change loss_type."
            )
        if "robust" in self.loss_type and self.label_smoothing >= 0.5:
            raise ConfigError("loss_type 'robust' needs label_smoothing in [0, 0.5): at 0.5 its 1/(1-2ε) factor is infinite.")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ConfigError("loss_type 'exo_pair' needs label_smoothing > 0 (its log ε term); leave it unset for 1e-3.")
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ConfigError(
                f"f_divergence_type={self.f_divergence_type!r} is not known; choose one of: {', '.join(F_DIVERGENCES)}."
            )
        if self.f_divergence_type != "reverse_kl":
            other = [t for t in self.loss_type if t not in F_DIVERGENCE_LOSSES]
            if other:
                raise ConfigError(
                    f"f_divergence_type={self.f_divergence_type!r} applies to {', '.join(sorted(F_DIVERGENCE_LOSSES))}, "
                    f"not to {', '.join(other)}."
                )
        if self.f_alpha_divergence_coef <= 0:
            raise ConfigError(f"f_alpha_divergence_coef={self.f_alpha_divergence_coef} must be positive.")
        if self.use_weighting and set(self.loss_type) & {"aot", "aot_unpaired", "aot_pair"}:
            raise ConfigError("use_weighting (WPO) does not apply to aot / aot_unpaired: they sort the pairs, so a "
                              "pair's weight would meet another pair's loss; drop one of them.")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ConfigError(f"rpo_alpha={self.rpo_alpha} must be ≥ 0.")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ConfigError(f"ld_alpha={self.ld_alpha} must be in [0, 1].")
        if self.discopop_tau <= 0:
            raise ConfigError(f"discopop_tau={self.discopop_tau} must be positive.")

    @property
    def listwise_loss(self) -> str | None:
        """The listwise loss_type (plackett_luce, lipo), when that is the loss; None for pairwise losses."""
        from preftune.losses import LIST_LOSSES

        return self.loss_type[0] if self.loss_type[0] in LIST_LOSSES else None

    def _validate_listwise(self) -> None:
        """A listwise loss scores each prompt's whole ranking: alone, and without the pairwise options."""
        from preftune.losses import LIST_LOSSES

        listwise = [t for t in self.loss_type if t in LIST_LOSSES]
        if not listwise:
            return
        if len(self.loss_type) > 1:
            raise ConfigError(f"loss_type {listwise[0]!r} scores each prompt's whole ranking and cannot be combined "
                              f"with other loss types ({', '.join(self.loss_type)}); give it alone.")
        for name, value in (("rpo_alpha", self.rpo_alpha), ("ld_alpha", self.ld_alpha),
                            ("use_weighting", self.use_weighting or None), ("list_pairs", self.list_pairs)):
            if value is not None:
                raise ConfigError(f"{name} applies to pairwise losses, not to loss_type {listwise[0]!r} (a listwise "
                                  f"loss over each prompt's whole ranking); drop {name}.")

    def _validate_reference(self) -> None:
        if self.reference_free and (self.precompute_ref_log_probs or self.sync_ref_model):
            raise ConfigError("reference_free=True uses no reference model, so precompute_ref_log_probs and "
                              "sync_ref_model cannot be set with it.")
        super()._validate_reference()
