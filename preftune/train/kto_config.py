"""`KTOConfig`: every field of TRL 1.16's KTOConfig, with TRL's defaults, on preftune's base config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from preftune.errors import ConfigError
from preftune.train.config import PreferenceConfig

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")  # as preftune.losses.KTO_LOSS_TYPES (config stays import-light)


@dataclass
class KTOConfig(PreferenceConfig):
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306) on unpaired rows, against a reference model."""

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
    ref_model_init_kwargs: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is given by name."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute the reference log-probs (of the completions and of the KL completions) once "
                  "before training (cached on disk) and hold no reference model while training."},
    )
    precompute_ref_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: per_device_eval_batch_size)."}
    )
    ref_logps_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where precomputed reference log-probs are cached (default: $PREFTUNE_CACHE or "
                  "~/.cache/preftune/ref_logps)."},
    )
    sync_ref_model: bool = field(
        default=False, metadata={"help": "TR-DPO: move the reference towards the policy during training."}
    )
    ref_model_mixup_alpha: float = field(
        default=0.6, metadata={"help": "TR-DPO α: reference ← α·policy + (1−α)·reference."}
    )
    ref_model_sync_steps: int = field(default=512, metadata={"help": "TR-DPO: update the reference every N steps."})
    router_aux_loss_coef: Optional[float] = field(
        default=None,
        metadata={"help": "Mixture-of-Experts models: weight of the router's load-balancing loss (default: the model "
                  "config's own coefficient; 0 turns it off; refused for a model that is not MoE)."},
    )
    model_adapter_name: Optional[str] = field(
        default=None, metadata={"help": "Name of the trained adapter when the model holds two (see ref_adapter_name)."}
    )
    ref_adapter_name: Optional[str] = field(
        default=None, metadata={"help": "Name of an adapter on the same model used as the reference."}
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
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ConfigError("sync_ref_model (TR-DPO) changes the reference during training, so its log-probs cannot "
                              "be precomputed; drop one of sync_ref_model and precompute_ref_log_probs.")
        if not 0.0 <= self.ref_model_mixup_alpha <= 1.0:
            raise ConfigError(f"ref_model_mixup_alpha={self.ref_model_mixup_alpha} must be in [0, 1].")
        if self.ref_model_sync_steps < 1:
            raise ConfigError(f"ref_model_sync_steps={self.ref_model_sync_steps} must be ≥ 1.")
        if (self.model_adapter_name is None) != (self.ref_adapter_name is None):
            raise ConfigError("set model_adapter_name and ref_adapter_name together (two adapters on one model).")
