"""Training configurations: `ORPOConfig` and `DPOConfig` extend `TrainingArguments`.

Config is the single source of defaults, validated on construction — before any
model or data is loaded — with errors that say what to write instead. Every field
is also a command-line flag (via HfArgumentParser) with the `help` text below.

Departures from TRL's configs, and why:
- `bf16=None` (the default) means "bf16 mixed precision where the hardware has it":
  on a CUDA device with bf16 support it resolves to True, elsewhere to False, so the
  same script runs on a laptop and on an H100. An explicit True/False is kept.
- `evaluation_strategy` (the name used by older transformers and the ORPO tutorial)
  is accepted as an alias of `eval_strategy`.
- `logps_chunked` (on by default) computes log-probs without materialising the
  full (batch, seq, vocab) logits; see `preftune.logps`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import TrainingArguments

from .errors import ConfigError


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class PreferenceConfig(TrainingArguments):
    """Settings shared by every preference trainer."""

    # Defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-6, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N update steps (or a ratio of total steps if < 1)."})
    bf16: Optional[bool] = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: on where the GPU supports it, off on CPU."},
    )
    remove_unused_columns: Optional[bool] = field(
        default=False, metadata={"help": "Kept False: preftune selects the columns it needs itself."}
    )
    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "Alias of eval_strategy ('no', 'steps', 'epoch'), as in older transformers."}
    )

    # Lengths (see preftune.data.tokenize for the exact truncation rules).
    max_length: Optional[int] = field(
        default=1024, metadata={"help": "Maximum tokens of prompt + completion; longer pairs are truncated."}
    )
    max_prompt_length: Optional[int] = field(
        default=512, metadata={"help": "Maximum prompt tokens, applied when a pair exceeds max_length."}
    )
    max_completion_length: Optional[int] = field(
        default=None, metadata={"help": "Maximum tokens of each completion (None: no separate limit)."}
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "How a long prompt is cut: keep_end (drop its start) or keep_start (drop its end)."},
    )

    beta: float = field(default=0.1, metadata={"help": "Strength of the preference term."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model(s)."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Accepted for TRL compatibility; unused."})
    padding_value: Optional[int] = field(
        default=None, metadata={"help": "Token id used for padding (default: the tokenizer's pad token)."}
    )
    generate_during_eval: bool = field(default=False, metadata={"help": "Generate samples at each evaluation."})
    is_encoder_decoder: Optional[bool] = field(default=None, metadata={"help": "Set when using model_init."})
    model_init_kwargs: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is given by name."}
    )
    dataset_num_proc: Optional[int] = field(default=None, metadata={"help": "Processes used to tokenize the data."})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "Drop rows that cannot be read as a preference pair (and count them) instead of stopping."}
    )
    logps_chunked: bool = field(
        default=True,
        metadata={"help": "Compute log-probs from hidden states in chunks, never the full (batch, seq, vocab) logits."},
    )
    logps_chunk_size: Optional[int] = field(
        default=None, metadata={"help": "Tokens per log-prob chunk (default: sized to about 256 MB of fp32 logits)."}
    )

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            wanted = str(self.evaluation_strategy)
            current = getattr(self.eval_strategy, "value", self.eval_strategy)
            if current not in ("no", wanted):
                raise ConfigError(
                    f"evaluation_strategy={wanted!r} conflicts with eval_strategy={current!r}; set only eval_strategy."
                )
            self.eval_strategy = wanted
        if self.bf16 is None:
            self.bf16 = bool(_bf16_available() and not self.fp16 and not self.use_cpu)
        self._validate_preference_fields()
        super().__post_init__()

    def length_limits(self):
        from .data.tokenize import LengthLimits

        return LengthLimits(self.max_length, self.max_prompt_length, self.max_completion_length, self.truncation_mode)

    def _validate_preference_fields(self) -> None:
        self.length_limits()  # validates the length flags
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta} must be positive.")


@dataclass
class ORPOConfig(PreferenceConfig):
    """ORPO (Hong et al. 2024): SFT loss plus beta times the odds-ratio loss; no reference model."""

    beta: float = field(
        default=0.1, metadata={"help": "λ in the ORPO paper: weight of the odds-ratio term added to the NLL."}
    )
    nll_completion_only: bool = field(
        default=False,
        metadata={
            "help": "Compute the NLL term on the chosen completion only. Default: prompt + completion, "
            "as in the paper's official code."
        },
    )


@dataclass
class DPOConfig(PreferenceConfig):
    """DPO (Rafailov et al. 2023) and its family of losses, against a reference model."""

    beta: float = field(
        default=0.1, metadata={"help": "β in DPO: higher stays closer to the reference model."}
    )
    loss_type: str = field(default="sigmoid", metadata={"help": "Which DPO-family loss to use (see README)."})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "cDPO: probability ε in [0, 0.5] that a preference label is flipped."}
    )
    reference_free: bool = field(
        default=False, metadata={"help": "Ignore the reference model (an implicit uniform reference)."}
    )
    ref_model_init_kwargs: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is given by name."}
    )

    def _validate_preference_fields(self) -> None:
        super()._validate_preference_fields()
        from .losses import DPO_LOSSES

        if self.loss_type not in DPO_LOSSES:
            raise ConfigError(
                f"loss_type={self.loss_type!r} is not known; choose one of: {', '.join(sorted(DPO_LOSSES))}."
            )
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5].")
