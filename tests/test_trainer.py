"""Trainer wiring: reference strategies, data reports, TRL-compatible arguments."""
import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import ConfigError, DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data
from preftune.train.reference import AdapterDisabledReference, ModelReference


def tiny():
    return AutoModelForCausalLM.from_pretrained(tiny_model_path()), AutoTokenizer.from_pretrained(tiny_model_path())


def pairs(n=8):
    return load_preference_data("tiny-prefs", "train").select(range(n))


def test_dpo_with_peft_uses_adapter_disabled_reference_without_a_copy(tmp_path):
    model, tok = tiny()
    args = DPOConfig(output_dir=str(tmp_path), max_steps=2, learning_rate=5e-3, per_device_train_batch_size=4,
                     save_strategy="no", report_to="none")
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert isinstance(trainer.reference, AdapterDisabledReference)
    assert not hasattr(trainer.reference, "model")  # no second copy of the weights
    # LoRA B starts at zero: policy == reference, so the loss is exactly log 2 before training
    assert trainer.evaluate(eval_dataset=pairs())["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    # after training the adapter moved the policy; the reference (adapter off) is still the base model
    base, _ = tiny()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    from preftune.data.collate import PreferenceBatch

    ref = trainer.reference.logps(trainer.model, PreferenceBatch.from_inputs(batch))
    from preftune.logps.causal import sequence_logps

    expected = sequence_logps(base.eval(), batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert torch.allclose(ref.completion_logps, expected.completion_logps, atol=1e-4)
    after = trainer.evaluate(eval_dataset=pairs())
    assert after["eval_loss"] < math.log(2)


def test_explicit_ref_model_is_used_and_frozen(tmp_path):
    model, tok = tiny()
    ref, _ = tiny()
    args = DPOConfig(output_dir=str(tmp_path), report_to="none")
    trainer = DPOTrainer(model, ref, args=args, processing_class=tok, train_dataset=pairs())
    assert isinstance(trainer.reference, ModelReference) and trainer.reference.model is ref
    assert not any(p.requires_grad for p in ref.parameters())


def test_reference_free_dpo_has_no_reference(tmp_path):
    model, tok = tiny()
    trainer = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path), reference_free=True), processing_class=tok,
                         train_dataset=pairs())
    assert trainer.reference is None


def test_orpo_has_no_reference_and_accepts_tokenizer_alias(tmp_path):
    model, tok = tiny()
    trainer = ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path)), train_dataset=pairs(), tokenizer=tok)
    assert trainer.reference is None and trainer.processing_class is tok
    with pytest.raises(ConfigError, match="pass the tokenizer once"):
        ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path)), train_dataset=pairs(),
                    tokenizer=tok, processing_class=AutoTokenizer.from_pretrained(tiny_model_path()))


def test_model_given_by_path_loads_model_and_tokenizer(tmp_path):
    trainer = ORPOTrainer(model=tiny_model_path(), args=ORPOConfig(output_dir=str(tmp_path)), train_dataset=pairs())
    assert trainer.processing_class.eos_token == "<|im_end|>"


def test_truncation_drops_are_counted_before_training(tmp_path):
    model, tok = tiny()
    long_prompt = " ".join(["word"] * 300)
    rows = [{"prompt": "Hi there", "chosen": "Hello friend", "rejected": "Go away"}] * 3
    rows.append({"prompt": long_prompt, "chosen": "Hello friend", "rejected": "Go away"})
    args = ORPOConfig(output_dir=str(tmp_path), max_length=64, max_prompt_length=None)
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows))
    report = trainer.data_reports["train"]
    assert (report.n_rows, report.n_kept, report.n_dropped_empty_after_truncation) == (4, 3, 1)
    assert len(trainer.train_dataset) == 3
    assert "1 dropped" in report.summary()


def test_orpo_nll_on_completion_only_changes_the_nll(tmp_path):
    model, tok = tiny()
    full = ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path)), processing_class=tok,
                       train_dataset=pairs())
    completion = ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path), nll_completion_only=True),
                             processing_class=tok, train_dataset=pairs())
    a = full.evaluate(eval_dataset=pairs())["eval_nll_loss"]
    b = completion.evaluate(eval_dataset=pairs())["eval_nll_loss"]
    # both are token means over the chosen rows (as TRL): the completion-only one over fewer tokens
    assert b > 0 and a > 0
    assert a != pytest.approx(b, rel=1e-3)


def test_a_user_built_peft_model_with_a_patched_forward_is_used_as_is(tmp_path):
    """As unsloth's FastLanguageModel.get_peft_model returns: a PeftModel whose forward was patched."""
    from peft import get_peft_model

    model, tok = tiny()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    calls = []
    inner = peft_model.base_model.model
    original = inner.forward

    def patched_forward(*args, **kwargs):  # a stand-in for a patched fast kernel: same maths, counted
        calls.append(1)
        return original(*args, **kwargs)

    inner.forward = patched_forward
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    args = ORPOConfig(output_dir=str(tmp_path), max_steps=2, learning_rate=5e-3, per_device_train_batch_size=4,
                      save_strategy="no", report_to="none")
    trainer = ORPOTrainer(model=peft_model, args=args, processing_class=tok, train_dataset=pairs())
    assert trainer.model is peft_model  # not re-wrapped, not copied
    trainer.train()
    assert calls, "the patched forward was bypassed"
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in peft_model.named_parameters())


@pytest.mark.parametrize("strategy", ["group_by_length", "batch_rebalance"])
def test_length_aware_samplers_get_each_pairs_length(tmp_path, strategy):
    """transformers' length-aware samplers look for input_ids, which preference data has not: the
    trainer hands them prompt + chosen + rejected ids per pair, and training runs."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler

    model, tok = tiny()
    args = ORPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to="none",
                      save_strategy="no", train_sampling_strategy=strategy)
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(16))
    ds = trainer.train_dataset
    want = [len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    assert len(set(want)) > 4  # the pairs differ in length
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler if strategy == "group_by_length" else BatchRebalanceSampler)
    assert list(sampler.lengths) == want
    assert "length" not in trainer.train_dataset.column_names  # the data itself is unchanged
    trainer.train()
    assert trainer.state.global_step == 2


def test_pair_lengths_column_on_exact_ids():
    from datasets import Dataset

    from preftune.data.prepare import with_pair_lengths

    ds = Dataset.from_dict({"prompt_ids": [[1, 5, 6], [1]], "chosen_ids": [[7, 2], [8, 9, 2]], "rejected_ids": [[2], [2]]})
    assert with_pair_lengths(ds)["length"] == [6, 5]
    assert with_pair_lengths(ds, "n")["n"] == [6, 5]
    kept = ds.add_column("length", [0, 0])
    assert with_pair_lengths(kept)["length"] == [0, 0]  # a column the user gave is kept


def test_prepared_data_and_its_report_come_through_the_constructor(tmp_path):
    from preftune.train.inputs import PreparedData, prepare_split

    model, tok = tiny()
    args = ORPOConfig(output_dir=str(tmp_path), report_to="none")
    prepared = prepare_split(pairs(), tok, args, "train")
    assert isinstance(prepared, PreparedData) and prepared.report.n_kept == 8
    trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=prepared,
                          dataset_names=["my-prefs.jsonl"])
    assert trainer.data_reports == {"train": prepared.report}  # not prepared a second time
    assert trainer.train_dataset is prepared.dataset
    assert trainer.dataset_names == ["my-prefs.jsonl"]
    assert args.is_encoder_decoder is None and trainer.is_encoder_decoder is False  # the config is never changed


def test_orpo_refuses_a_reference_model(tmp_path):
    model, tok = tiny()
    with pytest.raises(ConfigError, match="uses no reference model"):
        from preftune.train.trainer import PreferenceTrainer

        PreferenceTrainer(model=model, ref_model=tiny()[0], args=ORPOConfig(output_dir=str(tmp_path), report_to="none"),
                          processing_class=tok, train_dataset=pairs())


@pytest.mark.parametrize("cls, config", [(ORPOTrainer, ORPOConfig), (DPOTrainer, DPOConfig)])
def test_a_steps_metrics_are_gathered_in_one_collective(tmp_path, cls, config):
    model, tok = tiny()
    args = config(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, max_steps=2,
                  logging_steps=1, save_strategy="no")
    trainer = cls(model=model, args=args, processing_class=tok, train_dataset=pairs())
    calls = []
    real = trainer.accelerator.gather_for_metrics
    trainer.accelerator.gather_for_metrics = lambda x, *a, **k: calls.append(tuple(x.shape)) or real(x, *a, **k)
    trainer.train()
    logged = trainer.state.log_history[0]
    names = [k for k in logged if "/" in k or k in ("nll_loss", "log_odds_ratio", "log_odds_chosen", "entropy",
                                                   "mean_token_accuracy")]
    token_weighted = {"logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy", "nll_loss"}
    # a column per per-pair metric, two (numerator, denominator) per token-weighted one, one for num_tokens
    n_columns = sum(2 if k in token_weighted else 1 for k in names) + 1
    assert calls == [(4, n_columns)] * 2  # one (B, K) gather per step
    assert logged["num_tokens"] > 0  # its exact value against TRL: tests/test_trl_parity.py
    assert trainer.state.log_history[0]["rewards/accuracies"] in (0.0, 0.25, 0.5, 0.75, 1.0)
