"""DPO, complete: every loss type end to end, the modifiers, and every reference strategy."""
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data
from preftune.logps import SequenceLogps
from preftune.losses import DPO_LOSSES
from preftune.train.objectives import ld_token_weights, objective_from_config
from preftune.train.reference import AdapterSwitchReference, ModelReference, PrecomputedReference

LOG2 = math.log(2)


def tiny():
    return AutoModelForCausalLM.from_pretrained(tiny_model_path()), AutoTokenizer.from_pretrained(tiny_model_path())


def pairs(n=8, split="train"):
    return load_preference_data("tiny-prefs", split).select(range(n))


def dpo(tmp_path, model=None, **kw):
    m, tok = tiny()
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8,
                    learning_rate=5e-3, max_steps=2, save_strategy="no", report_to="none", seed=0)
    ref_model = kw.pop("ref_model", None)
    peft_config = kw.pop("peft_config", None)
    settings.update(kw)
    return DPOTrainer(model=model or m, ref_model=ref_model, args=DPOConfig(**settings), processing_class=tok,
                      train_dataset=pairs(), eval_dataset=pairs(8, "test"), peft_config=peft_config)


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_every_loss_type_trains(tmp_path, loss_type):
    trainer = dpo(tmp_path, loss_type=loss_type)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    metrics = trainer.evaluate()
    assert all(math.isfinite(l) for l in losses) and math.isfinite(metrics["eval_loss"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected"):
        assert "eval_" + key in metrics


def test_combined_losses_are_the_weighted_sum(tmp_path):
    """At policy == reference: sigmoid = log 2; sft = per-token NLL of chosen = -logps/chosen / tokens."""
    single = dpo(tmp_path, loss_type="sft").evaluate()
    both = dpo(tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[0.25, 2.0]).evaluate()
    assert both["eval_loss"] == pytest.approx(0.25 * LOG2 + 2.0 * single["eval_loss"], rel=1e-5)


def fake_logps(chosen, rejected, tokens=(4.0, 4.0), wpo=None):
    t = torch.tensor
    logps = t([*chosen, *rejected], dtype=torch.float64)
    toks = t([tokens[0]] * len(chosen) + [tokens[1]] * len(rejected), dtype=torch.float64)
    zeros = torch.zeros_like(logps)
    return SequenceLogps(logps, toks, zeros, zeros, zeros, None, None if wpo is None else t(wpo, dtype=torch.float64))


def test_rpo_adds_alpha_times_chosen_nll(tmp_path):
    """policy c=-8, r=-12; ref c=-10, r=-10; β=0.1: h = 2+2 = 4, sigmoid = log(1+e^-0.4) = 0.5130153.
    NLL(chosen) per token = 8/4 = 2; rpo_alpha = 0.5 -> 0.5130153 + 1.0 = 1.5130153.
    Two pairs, chosen -8 (4 tokens) and -6 (2 tokens): the NLL is the batch's token mean 14/6, not
    the mean of the pairs' 2 and 3."""
    objective = objective_from_config(DPOConfig(output_dir=str(tmp_path), rpo_alpha=0.5))
    out = objective(fake_logps([-8.0], [-12.0]), fake_logps([-10.0], [-10.0]))
    assert out.loss.item() == pytest.approx(1.5130153, abs=1e-6)
    assert [v.item() for v in out.token_metrics["nll_loss"]] == [8.0, 4.0]
    t = torch.tensor
    two = SequenceLogps(t([-8.0, -6.0, -12.0, -12.0], dtype=torch.float64), t([4.0, 2.0, 4.0, 4.0], dtype=torch.float64),
                        *(torch.zeros(4, dtype=torch.float64),) * 3)
    sft_only = objective_from_config(DPOConfig(output_dir=str(tmp_path), loss_type="sft"))
    assert sft_only(two, two).loss.item() == pytest.approx(14 / 6)


def test_wpo_weights_each_pair_by_its_probability(tmp_path):
    """WPO weight = exp(w_c + w_r), no clamp (TRL 1.16): w = (-0.5, -0.25) -> exp(-0.75) = 0.4723666;
    (0.5, 0.25) -> exp(0.75) = 2.1170000; the loss scales by it."""
    objective = objective_from_config(DPOConfig(output_dir=str(tmp_path), use_weighting=True))
    policy = fake_logps([-8.0], [-12.0], wpo=[-0.5, -0.25])
    out = objective(policy, fake_logps([-10.0], [-10.0]))
    assert out.metrics["wpo_weights"].item() == pytest.approx(math.exp(-0.75))
    assert out.loss.item() == pytest.approx(0.5130153 * math.exp(-0.75), abs=1e-6)
    capped = objective(fake_logps([-8.0], [-12.0], wpo=[0.5, 0.25]), fake_logps([-10.0], [-10.0]))
    assert capped.metrics["wpo_weights"].item() == pytest.approx(2.1170000, abs=1e-7)
    assert capped.loss.item() == pytest.approx(0.5130153 * 2.1170000, abs=1e-6)


def test_ld_weights_keep_the_shared_length_and_scale_the_rest():
    """Pair: chosen completion 3 tokens, rejected 5 tokens -> l_p = 3; the rejected's 4th and 5th get α."""
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0]])
    w = ld_token_weights(mask, 0.3)
    assert (w * mask).tolist() == [[0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, pytest.approx(0.3), pytest.approx(0.3), 0]]


def test_bco_pair_has_no_running_reward_shift(tmp_path):
    """TRL 1.16: L = -log σ(β·rc) - log σ(-β·rr), the same at every step. rc = 2, rr = -2, β = 0.1:
    2·softplus(-0.2) = 2·0.5981389 = 1.1962778, at the first call and the second."""
    objective = objective_from_config(DPOConfig(output_dir=str(tmp_path), loss_type="bco_pair"))
    for _ in range(2):
        out = objective(fake_logps([-8.0], [-12.0]), fake_logps([-10.0], [-10.0]))
        assert out.loss.item() == pytest.approx(1.1962778, abs=1e-6)


def test_ld_weights_apply_to_the_reference_too(tmp_path):
    """TRL 1.16 weights the reference's log-probs with the same LD mask as the policy's."""
    objective = objective_from_config(DPOConfig(output_dir=str(tmp_path), ld_alpha=0.3))
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    want = ld_token_weights(mask, 0.3)
    assert torch.equal(objective.reference_request(mask).completion_weights, want)
    assert torch.equal(objective.logps_request(mask).completion_weights, want)
    plain = objective_from_config(DPOConfig(output_dir=str(tmp_path)))
    assert plain.reference_request(mask).completion_weights is None


def test_ld_dpo_and_wpo_and_rpo_train_end_to_end(tmp_path):
    trainer = dpo(tmp_path, ld_alpha=0.5, use_weighting=True, rpo_alpha=1.0)
    trainer.train()
    logged = {k for e in trainer.state.log_history for k in e}
    assert {"wpo_weights", "nll_loss"} <= logged


def test_ld_alpha_one_equals_plain_dpo(tmp_path):
    plain = dpo(tmp_path).evaluate()
    ld = dpo(tmp_path, ld_alpha=1.0)
    ld.train()
    plain_trainer = dpo(tmp_path)
    plain_trainer.train()
    assert ld.evaluate()["eval_loss"] == pytest.approx(plain_trainer.evaluate()["eval_loss"], rel=1e-5)
    assert plain["eval_loss"] == pytest.approx(LOG2, abs=1e-6)


def test_two_adapters_on_one_base(tmp_path):
    """Seed 004 option 3: the trained adapter and a reference adapter with the same starting weights.

    (The seed names the trained adapter "train"; PEFT 0.21 refuses that name because it
    shadows nn.Module.train, so it is "policy" here.)"""
    base, _ = tiny()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "sft-adapter")
    base, _ = tiny()
    model = PeftModel.from_pretrained(base, tmp_path / "sft-adapter", is_trainable=True, adapter_name="policy")
    model.load_adapter(tmp_path / "sft-adapter", adapter_name="reference")
    trainer = dpo(tmp_path, model=model, model_adapter_name="policy", ref_adapter_name="reference")
    assert isinstance(trainer.reference, AdapterSwitchReference)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(LOG2, abs=1e-6)  # identical adapters
    ref_before = {n: p.clone() for n, p in model.named_parameters() if ".reference." in n}
    train_before = {n: p.clone() for n, p in model.named_parameters() if ".policy." in n}
    trainer.train()
    assert all(torch.equal(p, ref_before[n]) for n, p in model.named_parameters() if ".reference." in n)
    assert any(not torch.equal(p, train_before[n]) for n, p in model.named_parameters() if ".policy." in n)
    assert trainer.evaluate()["eval_loss"] < LOG2


def test_precompute_holds_no_reference_and_matches_live_reference(tmp_path, monkeypatch):
    import preftune.train.reference as reference

    def no_copy(model):
        raise AssertionError("precompute must not copy the policy")

    monkeypatch.setattr(reference, "frozen_copy", no_copy)
    cache = tmp_path / "cache"
    pre = dpo(tmp_path / "a", precompute_ref_log_probs=True, ref_logps_cache_dir=str(cache))
    assert isinstance(pre.reference, PrecomputedReference)
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(pre.train_dataset.column_names)
    assert pre.evaluate()["eval_loss"] == pytest.approx(LOG2, abs=1e-6)
    pre.train()
    monkeypatch.undo()
    live = dpo(tmp_path / "b")
    assert isinstance(live.reference, ModelReference)
    live.train()
    assert pre.evaluate()["eval_loss"] == pytest.approx(live.evaluate()["eval_loss"], rel=1e-5)


def test_precomputed_logps_are_cached_and_reused(tmp_path, monkeypatch, capsys):
    import preftune.train.precompute as precompute

    cache = tmp_path / "cache"
    first = dpo(tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(cache), beta=0.1)
    assert len(list(cache.iterdir())) == 2  # train and eval
    monkeypatch.setattr(precompute, "compute_reference_logps", lambda *a, **k: pytest.fail("recomputed"))
    second = dpo(tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(cache), beta=0.5)  # a beta sweep
    assert "reusing precomputed reference log-probs" in capsys.readouterr().out
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    # other reference weights -> another key -> computed again
    monkeypatch.undo()
    other, _ = tiny()
    with torch.no_grad():
        other.model.norm.weight.mul_(1.5)
    dpo(tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(cache), ref_model=other)
    assert len(list(cache.iterdir())) == 4


def test_tr_dpo_hard_sync_copies_the_policy(tmp_path):
    trainer = dpo(tmp_path, sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=2, max_steps=2)
    ref = trainer.reference.model
    trainer.train()
    policy = dict(trainer.model.named_parameters())
    assert all(torch.equal(p, policy[n]) for n, p in ref.named_parameters())


def test_tr_dpo_soft_sync_mixes(tmp_path):
    trainer = dpo(tmp_path, sync_ref_model=True, ref_model_mixup_alpha=0.25, ref_model_sync_steps=1, max_steps=1)
    ref = trainer.reference.model
    start = {n: p.clone() for n, p in ref.named_parameters()}
    trainer.train()
    policy = dict(trainer.model.named_parameters())
    for n, p in ref.named_parameters():
        assert torch.allclose(p, 0.25 * policy[n] + 0.75 * start[n], atol=1e-6)


@pytest.mark.parametrize("trainer_cls,config_cls", [(ORPOTrainer, ORPOConfig), (DPOTrainer, DPOConfig)])
def test_moe_router_aux_loss_is_added_and_logged(tmp_path, trainer_cls, config_cls):
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        output_router_logits=True, router_aux_loss_coef=0.25)
    model = MixtralForCausalLM(cfg)
    args = config_cls(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none",
                      save_strategy="no", logging_steps=1)
    trainer = trainer_cls(model=model, args=args, processing_class=tok, train_dataset=pairs())
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    model.eval()
    with torch.no_grad():
        with_aux, metrics = trainer.compute_loss(model, inputs, return_outputs=True)
        trainer.aux_loss_enabled = False  # decided once, when the trainer is built (as TRL)
        without = trainer.compute_loss(model, inputs)
        trainer.aux_loss_enabled = True
    aux = metrics["aux_loss"].item()
    assert aux > 0 and with_aux.item() == pytest.approx(without.item() + 0.25 * aux, rel=1e-5)
    trainer.train()
    assert any("aux_loss" in e for e in trainer.state.log_history)


def test_beta_zero_is_plain_sft_for_orpo_and_refused_for_dpo(tmp_path):
    from preftune.errors import ConfigError

    objective = objective_from_config(ORPOConfig(output_dir=str(tmp_path), beta=0.0, nll_completion_only=True))
    out = objective(fake_logps([-8.0, -6.0], [-12.0, -1.0], tokens=(4.0, 4.0)))
    assert out.loss.item() == pytest.approx(14 / 8)  # the chosen tokens' mean NLL, nothing else
    with pytest.raises(ConfigError, match="beta=0.0 must be positive"):
        DPOConfig(output_dir=str(tmp_path), beta=0.0)
