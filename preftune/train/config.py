"""Training configurations: `PreferenceConfig` (what every trainer shares), `ORPOConfig` and `ReferenceConfig`
(the reference fields DPO and KTO share; `DPOConfig` is in `dpo_config`) extend `TrainingArguments`.

Config is the single source of defaults, validated on construction — before any
model or data is loaded — with errors that say what to write instead. Every field
is also a command-line flag (via HfArgumentParser) with the `help` text below.

Departures from TRL's configs, and why:
- `bf16=None` (the default) means "bf16 mixed precision where the hardware has it":
  on a CUDA device with bf16 support it resolves to True, elsewhere to False, so the
  same script runs on a laptop and on an H100. An explicit True/False is kept.
- `dataloader_pin_memory=None` (the default) pins batches only where there is an
  accelerator: on a CPU-only machine pinning does nothing but make PyTorch warn.
- Names older transformers had and TRL's documented signatures still show are accepted
  as aliases: `evaluation_strategy` (the ORPO tutorial) → `eval_strategy`;
  `warmup_ratio` → `warmup_steps` (transformers 5 reads a value below 1 as a ratio);
  `group_by_length=True` → `train_sampling_strategy="group_by_length"`; `no_cuda` → `use_cpu`.
  An alias that contradicts its target, both given, is an error.
- `logps_chunked`, `logps_prefix_sharing` and `logps_fused_head` (all on by default,
  all exact) compute log-probs without materialising the full (batch, seq, vocab)
  logits, with each pair's prompt run once and a plain LM head back-propagated in
  closed form; see `preftune.logps.causal`, `preftune.logps.prefix` and `preftune.logps.head`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from transformers import TrainingArguments

from preftune.errors import ConfigError
from preftune.train.environment import accelerator_available, bf16_available, check_precision, check_trackers


# Older transformers' names -> the field each sets (resolved in PreferenceConfig._resolve_legacy_names).
LEGACY_ALIASES = {"evaluation_strategy": "eval_strategy", "warmup_ratio": "warmup_steps",
                  "group_by_length": "train_sampling_strategy", "no_cuda": "use_cpu"}


class UnknownConfigField(ConfigError, TypeError):
    """A keyword the config does not have: one sentence, and still the TypeError a dataclass raises."""


# Names that tutorials use for fields under another name (seed 002's ORPO chapter): what to write instead.
_ORPO_LAMBDA = ("ORPO's λ, the weight of the odds-ratio term added to the NLL, is `beta` (default 0.1), and ORPO has "
                "no temperature")
MISNAMED_FIELDS = {"orpo_alpha": _ORPO_LAMBDA, "orpo_beta": _ORPO_LAMBDA, "orpo_lambda": _ORPO_LAMBDA}


def check_field_names(cls, names) -> None:
    """Raise `UnknownConfigField` (one sentence) when `names` holds a keyword `cls` has no field for."""
    import difflib
    from dataclasses import fields

    known = {f.name for f in fields(cls) if f.init}
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    listed = " or ".join(unknown)
    why = sorted({MISNAMED_FIELDS[n] for n in unknown if n in MISNAMED_FIELDS})
    if why:
        raise UnknownConfigField(f"{cls.__name__} has no {listed}: {'; '.join(why)}; set beta and drop {' and '.join(unknown)}.")
    near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else "."
    raise UnknownConfigField(f"{cls.__name__} has no field {unknown[0]!r}{hint}")


def _value(x):
    return getattr(x, "value", x)  # an enum member's value, or the value itself


def resolve_pad_to_multiple_of(value):
    """pad_to_multiple_of as given (int, "auto", "none"/"null", a digit string from the command line) -> int or None.

    "auto" is None: TRL resolves it to 128 on AWS Neuron only (which compiles once per shape)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("auto", "none", "null"):
            return None
        if not word.isdigit():
            raise ConfigError(f"pad_to_multiple_of={value!r} must be a positive integer, 'auto' or 'none'.")
        value = int(word)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"pad_to_multiple_of={value!r} must be a positive integer, 'auto' or 'none'.")
    return value


@dataclass
class PreferenceConfig(TrainingArguments):
    """Settings shared by every preference trainer."""

    _beta_may_be_zero = False  # a class attribute, not a field: ORPO allows β = 0, DPO needs β > 0

    # Defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-6, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N update steps (or a ratio of total steps if < 1)."})
    dataloader_pin_memory: Optional[bool] = field(
        default=None,
        metadata={"help": "Pin batches in page-locked memory for faster copies to the accelerator. Default: on where "
                          "there is an accelerator (and not --use_cpu), off on a CPU-only machine, where it does nothing."},
    )
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
    list_pairs: Optional[str] = field(
        default=None,
        metadata={"help": "List rows (one prompt, several scored answers): which ordered answer pairs a pairwise loss "
                          "trains on — all, best_vs_rest or adjacent. Default: all (ORPO: best_vs_rest)."},
    )
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Fraction of the steps spent warming up the learning rate, in [0, 1) "
                                "(older transformers; sets warmup_steps, which reads a value below 1 as a ratio)."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch pairs of similar length (older transformers; "
                                 "= --train_sampling_strategy group_by_length)."}
    )
    no_cuda: bool = field(default=False, metadata={"help": "Older transformers' name of --use_cpu."})

    # Lengths (see preftune.data.tokenize for the exact truncation rules). Defaults are TRL 1.16's:
    # no max_prompt_length (TRL 1.16 has none), keep_start.
    max_length: Optional[int] = field(
        default=1024, metadata={"help": "Maximum tokens of prompt + completion; longer pairs are truncated as TRL 1.16 "
                                "does (keep_start: the completions' ends are cut, and a pair whose prompt alone fills "
                                "max_length is dropped; encoder-decoder models: of the prompt, and of each completion)."}
    )
    max_prompt_length: Optional[int] = field(
        default=None, metadata={"help": "Older trainers' prompt limit (TRL 1.16 has none): when set, a pair longer than "
                                "max_length first has its prompt cut to this many tokens (encoder-decoder models: "
                                "always). Default None: TRL 1.16's rules."}
    )
    max_completion_length: Optional[int] = field(
        default=None, metadata={"help": "Maximum tokens of each completion (None: no separate limit)."}
    )
    truncation_mode: str = field(
        default="keep_start",
        metadata={"help": "keep_start (TRL's default: keep the first max_length tokens) or keep_end (keep the last "
                  "ones; deprecated in TRL 1.16). With max_prompt_length set: which end of a long prompt is kept."},
    )

    beta: float = field(default=0.1, metadata={"help": "Strength of the preference term."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model(s)."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Accepted for TRL compatibility; unused."})
    padding_value: Optional[int] = field(
        default=None, metadata={"help": "Token id used for padding (default: the tokenizer's pad token)."}
    )
    generate_during_eval: bool = field(
        default=False,
        metadata={"help": "At each evaluation, answer a few eval prompts (policy, and reference for DPO) and log them "
                  "to OUTPUT_DIR/eval_generations.jsonl and the trackers."},
    )
    generation_num_prompts: int = field(default=4, metadata={"help": "Prompts answered by generate_during_eval."})
    generation_max_new_tokens: int = field(default=64, metadata={"help": "Longest answer of generate_during_eval."})
    is_encoder_decoder: Optional[bool] = field(
        default=None,
        metadata={"help": "Encoder-decoder model (T5, BART): the prompt is the encoder's input, each completion a decoder "
                  "target. Default: read from the model's config; set it when using model_init."},
    )
    model_init_kwargs: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is given by name "
                                "(dtype float32 unless set here, as TRL's DPOTrainer)."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the Python code a hub model ships with its weights (off by default: only for models you "
                  "trust); passed to from_pretrained of the model, the reference model and the tokenizer/processor."},
    )
    dataset_num_proc: Optional[int] = field(default=None, metadata={"help": "Processes used to tokenize the data."})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "Drop rows that cannot be read as a preference pair (and count them) instead of stopping."}
    )
    logps_chunked: bool = field(
        default=True,
        metadata={"help": "Compute log-probs from hidden states in chunks, never the full (batch, seq, vocab) logits."},
    )
    logps_prefix_sharing: bool = field(
        default=True,
        metadata={"help": "Run each pair's shared prompt once (one packed row with a prefix-sharing attention mask) "
                  "where that is exact; falls back to the plain forward otherwise (e.g. flash-attention)."},
    )
    logps_chunk_size: Optional[int] = field(
        default=None, metadata={"help": "Tokens per log-prob chunk (default: on CPU as many tokens as the model's "
                                  "hidden size, at most 2^26 logits; on other devices 2^26 logits (256 MiB fp32); at least 64 tokens)."}
    )
    logps_fused_head: bool = field(
        default=True, metadata={"help": "Back-propagate a plain linear LM head by its closed-form gradient instead of "
                                "checkpointing each chunk (a frozen head, as with LoRA: no recomputed logits)."},
    )
    # TRL 1.16 DPOConfig's batch-layout and memory flags (preftune.logps.packing, data.collate, train.offload).
    padding_free: bool = field(
        default=False,
        metadata={"help": "Run each batch without padding: the real tokens of all its rows packed into one sequence "
                  "(position ids restart per row; with prefix sharing, the pairs' rows concatenated with a "
                  "block-diagonal mask). Exact; where it would not be (encoder-decoder or vision models, an "
                  "attention implementation that ignores packed position ids) the batch runs padded, with a warning."},
    )
    # Typed str for the command line (an int is accepted from Python and resolved): HfArgumentParser reads a
    # Union[int, str, None] by the order of its arguments, which typing's cache may hand back reordered.
    pad_to_multiple_of: Optional[str] = field(
        default="auto",
        metadata={"help": "Pad each batch's sequence length up to a multiple of this (an integer, or none). 'auto' "
                  "(TRL's default) means none here: TRL pads to 128 only on AWS Neuron, which preftune does not run on."},
    )
    activation_offloading: bool = field(
        default=False,
        metadata={"help": "Keep the activations saved for backward in CPU memory between forward and backward "
                  "(parameters and small tensors stay): less accelerator memory, more host transfers. "
                  "No effect on a CPU-only run."},
    )
    max_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "Optimizer steps with a NaN/inf loss or gradient are skipped; after this many in a row "
                  "the run stops with a message (0: never stop)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Let the command line train into an output folder that already holds files "
                  "(otherwise it refuses, unless resuming)."},
    )

    def __new__(cls, *args, **kwargs):
        # Before the dataclass' __init__, whose TypeError names neither the config nor what to write instead.
        check_field_names(cls, kwargs)
        return super().__new__(cls)

    def _resolve_legacy_names(self) -> None:
        """Older transformers' names (see the module docstring) -> today's fields; a contradiction is an error."""
        def alias(name, value, target, default):
            current = _value(getattr(self, target))
            if current not in (default, value):
                raise ConfigError(f"{name} conflicts with {target}={current!r}; set only {target}.")
            setattr(self, target, value)

        if self.evaluation_strategy is not None:
            alias(f"evaluation_strategy={self.evaluation_strategy!r}", str(self.evaluation_strategy), "eval_strategy", "no")
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ConfigError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1); use warmup_steps for a number "
                                  "of steps.")
            alias(f"warmup_ratio={self.warmup_ratio}", self.warmup_ratio, "warmup_steps", 0)
        if self.group_by_length:
            alias("group_by_length=True", "group_by_length", "train_sampling_strategy", "random")
        if self.no_cuda:
            alias("no_cuda=True", True, "use_cpu", False)

    def __post_init__(self):
        self._resolve_legacy_names()
        if self.bf16 is None:
            self.bf16 = bool(bf16_available() and not self.fp16 and not self.use_cpu)
        if self.dataloader_pin_memory is None:  # pinning without an accelerator only makes PyTorch warn
            self.dataloader_pin_memory = bool(accelerator_available() and not self.use_cpu)
        check_precision(self)
        from preftune.train.parallel import resolve_presets

        resolve_presets(self)
        self._validate_preference_fields()
        super().__post_init__()

    def length_limits(self):
        from preftune.data.tokenize import LengthLimits

        return LengthLimits(self.max_length, self.max_prompt_length, self.max_completion_length, self.truncation_mode)

    def _validate_preference_fields(self) -> None:
        import math
        from dataclasses import fields

        for f in fields(self):
            value = getattr(self, f.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value} must be a finite number.")
        if self.learning_rate < 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must not be negative.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        self.length_limits()  # validates the length flags
        if self.beta < 0 or (self.beta == 0 and not self._beta_may_be_zero):
            raise ConfigError(f"beta={self.beta} must be positive" + (" or 0." if self._beta_may_be_zero else "."))
        check_trackers(self.report_to)
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"max_nonfinite_steps={self.max_nonfinite_steps} must be 0 (never stop) or more.")
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        from preftune.losses import LIST_PAIR_MODES

        if self.list_pairs is not None and self.list_pairs not in LIST_PAIR_MODES:
            raise ConfigError(f"list_pairs={self.list_pairs!r} is not known; choose one of: {', '.join(LIST_PAIR_MODES)}.")


@dataclass
class ORPOConfig(PreferenceConfig):
    """ORPO (Hong et al. 2024): SFT loss plus beta times the odds-ratio loss; no reference model."""

    _beta_may_be_zero = True  # β = 0: plain SFT on the chosen answers (TRL allows it)

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
class ReferenceConfig(PreferenceConfig):
    """What every trainer with a reference model shares (DPO, KTO): where the reference comes from and
    how it is kept (a loaded copy, precomputed log-probs, TR-DPO sync, a second adapter), and MoE's
    router loss weight."""

    ref_model_init_kwargs: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when ref_model is given by name."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute the reference log-probs once before training (cached on disk) and hold no "
                  "reference model while training."},
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
        metadata={"help": "Mixture-of-Experts models: weight of the router's load-balancing loss added to the loss "
                  "(default: the model config's own coefficient; 0 turns it off; refused for a model that is not MoE)."},
    )
    model_adapter_name: Optional[str] = field(
        default=None, metadata={"help": "Name of the trained adapter when the model holds two (see ref_adapter_name)."}
    )
    ref_adapter_name: Optional[str] = field(
        default=None, metadata={"help": "Name of an adapter on the same model used as the reference."}
    )

    def _validate_reference(self) -> None:
        """The reference fields' own checks (each family calls it from its validation)."""
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ConfigError("sync_ref_model (TR-DPO) changes the reference during training, so its log-probs cannot "
                              "be precomputed; drop one of sync_ref_model and precompute_ref_log_probs.")
        if not 0.0 <= self.ref_model_mixup_alpha <= 1.0:
            raise ConfigError(f"ref_model_mixup_alpha={self.ref_model_mixup_alpha} must be in [0, 1].")
        if self.ref_model_sync_steps < 1:
            raise ConfigError(f"ref_model_sync_steps={self.ref_model_sync_steps} must be ≥ 1.")
        if (self.model_adapter_name is None) != (self.ref_adapter_name is None):
            raise ConfigError("set model_adapter_name and ref_adapter_name together (two adapters on one model).")
        if self.ref_adapter_name is not None and self.ref_adapter_name == self.model_adapter_name:
            raise ConfigError("ref_adapter_name must differ from model_adapter_name.")
        if self.ref_adapter_name is not None and self.sync_ref_model:
            raise ConfigError("sync_ref_model mixes weights of two models; with two adapters use it without "
                              "ref_adapter_name, or drop sync_ref_model.")
        if self.precompute_ref_batch_size is not None and self.precompute_ref_batch_size < 1:
            raise ConfigError(f"precompute_ref_batch_size={self.precompute_ref_batch_size} must be ≥ 1.")
        if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
            raise ConfigError(f"router_aux_loss_coef={self.router_aux_loss_coef} must be ≥ 0 (0 turns the MoE "
                              "auxiliary loss off).")
