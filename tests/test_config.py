"""Config validation happens on construction, with messages that say what to change."""
import pytest

from preftune import ConfigError, DPOConfig, ORPOConfig


def test_defaults_match_trl_and_run_on_cpu(tmp_path):
    args = ORPOConfig(output_dir=str(tmp_path))
    assert (args.beta, args.max_length, args.max_prompt_length, args.truncation_mode) == (0.1, 1024, 512, "keep_end")
    assert args.learning_rate == 1e-6 and args.max_completion_length is None
    assert args.bf16 is False  # no CUDA here: resolved to fp32
    assert args.remove_unused_columns is False


def test_explicit_bf16_is_kept(tmp_path):
    assert ORPOConfig(output_dir=str(tmp_path), bf16=False).bf16 is False


def test_evaluation_strategy_alias(tmp_path):
    args = ORPOConfig(output_dir=str(tmp_path), evaluation_strategy="steps", eval_steps=0.2)
    assert args.eval_strategy.value == "steps" and args.eval_steps == 0.2
    with pytest.raises(ConfigError, match="set only eval_strategy"):
        ORPOConfig(output_dir=str(tmp_path), evaluation_strategy="steps", eval_strategy="epoch")


@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (ORPOConfig, dict(truncation_mode="keep_middle"), "truncation_mode"),
        (ORPOConfig, dict(max_length=0), "--max_length"),
        (ORPOConfig, dict(max_length=128, max_prompt_length=256), "--max_prompt_length"),
        (ORPOConfig, dict(beta=0.0), "beta=0.0 must be positive"),
        (DPOConfig, dict(loss_type="nope"), "loss_type='nope' is not known; choose one of: sigmoid"),
        (DPOConfig, dict(label_smoothing=0.7), "label_smoothing=0.7"),
    ],
)
def test_invalid_settings_rejected_before_anything_loads(tmp_path, cls, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        cls(output_dir=str(tmp_path), **kwargs)
    assert needle in str(err.value)
