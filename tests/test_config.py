"""Config validation happens on construction, with messages that say what to change."""
import pytest

from preftune import ConfigError, DPOConfig, ORPOConfig


def test_defaults_match_trl_and_run_on_cpu(tmp_path):
    args = ORPOConfig(output_dir=str(tmp_path))
    assert (args.beta, args.max_length, args.max_prompt_length, args.truncation_mode) == (0.1, 1024, None, "keep_start")
    # TRL 1.16 has no max_prompt_length: a max_length below the old 512 default is fine
    assert DPOConfig(output_dir=str(tmp_path), max_length=256).max_prompt_length is None
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


def test_older_transformers_names_in_trls_documented_signature(tmp_path):
    """TRL's ORPOConfig signature (seed 003) lists warmup_ratio, group_by_length and no_cuda, which
    transformers 5 dropped: each sets today's field, and contradicting that field is an error."""
    args = ORPOConfig(output_dir=str(tmp_path), warmup_ratio=0.1, group_by_length=True, no_cuda=True)
    assert args.warmup_steps == 0.1 and args.use_cpu is True
    assert str(getattr(args.train_sampling_strategy, "value", args.train_sampling_strategy)) == "group_by_length"
    plain = ORPOConfig(output_dir=str(tmp_path))
    assert plain.warmup_steps == 0 and not plain.use_cpu
    assert str(getattr(plain.train_sampling_strategy, "value", plain.train_sampling_strategy)) == "random"
    assert ORPOConfig(output_dir=str(tmp_path), warmup_ratio=0.1, warmup_steps=0.1).warmup_steps == 0.1  # agree
    for kwargs, needle in ((dict(warmup_ratio=1.5), r"warmup_ratio=1.5 must be in \[0, 1\)"),
                           (dict(warmup_ratio=0.1, warmup_steps=5), "warmup_ratio=0.1 conflicts with warmup_steps=5"),
                           (dict(group_by_length=True, train_sampling_strategy="sequential"),
                            "set only train_sampling_strategy")):
        with pytest.raises(ConfigError, match=needle):
            ORPOConfig(output_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (ORPOConfig, dict(truncation_mode="keep_middle"), "truncation_mode"),
        (ORPOConfig, dict(max_length=0), "--max_length"),
        (ORPOConfig, dict(max_length=128, max_prompt_length=256), "--max_prompt_length"),
        (ORPOConfig, dict(beta=-0.1), "beta=-0.1 must be positive or 0"),
        (DPOConfig, dict(beta=0.0), "beta=0.0 must be positive."),
        (DPOConfig, dict(loss_type="nope"), "loss_type='nope' is not known; choose one of: aot"),
        (DPOConfig, dict(loss_type=["sigmoid", "nope"]), "loss_type='nope'"),
        (DPOConfig, dict(label_smoothing=0.7), "label_smoothing=0.7"),
        (DPOConfig, dict(loss_type="robust", label_smoothing=0.5), "robust' needs label_smoothing in [0, 0.5)"),
        (DPOConfig, dict(loss_type="exo_pair", label_smoothing=0.0), "exo_pair' needs label_smoothing > 0"),
        (DPOConfig, dict(loss_type="ipo", label_smoothing=0.1), "has no effect on loss_type ipo"),
        (DPOConfig, dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "give one weight per loss type"),
        (DPOConfig, dict(f_divergence_type="tv"), "f_divergence_type='tv' is not known"),
        (DPOConfig, dict(loss_type="nca_pair", f_divergence_type="js_divergence"), "not to nca_pair"),
        (DPOConfig, dict(ld_alpha=1.5), "ld_alpha=1.5"),
        (DPOConfig, dict(rpo_alpha=-1.0), "rpo_alpha=-1.0"),
        (DPOConfig, dict(sync_ref_model=True, precompute_ref_log_probs=True), "drop one of sync_ref_model"),
        (DPOConfig, dict(reference_free=True, precompute_ref_log_probs=True), "reference_free=True"),
        (DPOConfig, dict(ref_model_mixup_alpha=2.0), "ref_model_mixup_alpha=2.0"),
        (DPOConfig, dict(ref_adapter_name="reference"), "set model_adapter_name and ref_adapter_name together"),
    ],
)
def test_invalid_settings_rejected_before_anything_loads(tmp_path, cls, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        cls(output_dir=str(tmp_path), **kwargs)
    assert needle in str(err.value)


def test_dpo_loss_settings_resolve(tmp_path):
    args = DPOConfig(output_dir=str(tmp_path), loss_type="ipo")
    assert args.loss_type == ["ipo"] and args.label_smoothing == 0.0
    assert DPOConfig(output_dir=str(tmp_path), loss_type="exo_pair").label_smoothing == 1e-3
    both = DPOConfig(output_dir=str(tmp_path), loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.2])
    assert both.loss_types == ["sigmoid", "sft"]


def test_bf16_without_a_gpu_says_how_to_proceed(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="--use_cpu true"):
        ORPOConfig(output_dir=str(tmp_path), bf16=True)
    assert ORPOConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True).bf16 is True


def test_bf16_on_a_gpu_without_bf16_names_the_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    with pytest.raises(ConfigError, match="V100.*--dtype fp16"):
        ORPOConfig(output_dir=str(tmp_path), bf16=True)
