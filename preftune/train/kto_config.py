"""`KTOConfig`: every field of TRL 1.16's KTOConfig, with TRL's defaults, on preftune's base config."""
from __future__ import annotations

from dataclasses import dataclass, field

from preftune.errors import ConfigError
from preftune.train.config import ReferenceConfig

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")  # as preftune.losses.KTO_LOSS_TYPES (config stays import-light)


@dataclass
class KTOConfig(ReferenceConfig):
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired rows, against a reference model (its
    fields and checks: ReferenceConfig, shared with DPO; precomputed log-probs include the KL rows')."""

    # TRL 1.16: the KL completion of each row is its neighbour's in a fixed-order batch, so sequential
    # sampling keeps a batch's KL completions the batch's own completions.
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={"help": "Sampler of the training data: sequential (TRL's KTO default; required by loss_type kto), "
                  "random or group_by_length."},
    )
    beta: float = field(
        default=0.1, metadata={"help": "β: higher stays closer to the reference model."}
    )
    loss_type: str = field(
        default="kto", metadata={"help": "kto (KTO paper) or apo_zero_unpaired (APO paper, unpaired; no KL term)."}
    )
    desirable_weight: float = field(
        default=1.0, metadata={"help": "λ_D: weight of the desirable rows' losses (to balance unequal counts)."}
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "λ_U: weight of the undesirable rows' losses (to balance unequal counts)."}
    )
    ld_alpha = None  # not a field: DPO's reference machinery asks for it (KTO weights no tokens)

    @property
    def calculate_kl(self) -> bool:
        """Whether the loss uses the KL reference point z₀ (every loss_type but apo_zero_unpaired)."""
        return self.loss_type != "apo_zero_unpaired"

    def _validate_preference_fields(self) -> None:
        super()._validate_preference_fields()
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r} is not a KTO loss; choose kto or apo_zero_unpaired.")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive.")
        if self.max_prompt_length is not None or self.max_completion_length is not None or \
                self.truncation_mode != "keep_start":
            raise ConfigError("KTO truncates as TRL 1.16's KTOTrainer (prompt + completion keeps its first max_length "
                              "tokens), so max_prompt_length, max_completion_length and truncation_mode cannot be set.")
        if self.calculate_kl and self.train_sampling_strategy != "sequential":
            raise ConfigError(f"loss_type={self.loss_type!r} estimates its KL term from each batch's own completions "
                              f"paired with other prompts, which needs train_sampling_strategy='sequential', not "
                              f"{self.train_sampling_strategy!r}.")
        if self.calculate_kl and self.per_device_train_batch_size < 2:
            raise ConfigError("loss_type='kto' needs per_device_train_batch_size of 2 or more: with one row the KL "
                              "completion is the row's own and the KL term equals its reward.")
        self._validate_reference()
