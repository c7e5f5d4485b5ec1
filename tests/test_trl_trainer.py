"""TRL 1.16 drop-in, trainer side: streams, named eval sets, reference log-probs of sets first seen at evaluation,
TRL's config fields (trust_remote_code, router_aux_loss_coef, pad_token), float32 loading, the MoE aux loss,
`ref_model` / `aux_loss_enabled`, ORPO's misnamed fields and beta=0."""
import dataclasses
import json
import math

import pytest
import torch
from datasets import Dataset, IterableDataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import ConfigError, DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data

LOG2 = math.log(2)


def tiny():
    return AutoModelForCausalLM.from_pretrained(tiny_model_path()), AutoTokenizer.from_pretrained(tiny_model_path())


def rows(n=8, split="train", start=0):
    return load_preference_data("tiny-prefs", split).select(range(start, start + n))


def settings(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                learning_rate=5e-3, max_steps=2, save_strategy="no", report_to="none", seed=0, logging_steps=1)
    base.update(kw)
    return base


# ----------------------------------------------------------------------- streams


def test_streamed_train_and_eval_data_give_the_map_style_numbers(tmp_path):
    """A stream is read in order: with the sequential sampler the map-style run sees the same batches."""
    data, held = rows(8), rows(4, "test")
    results = []
    for stream in (False, True):
        model, tok = tiny()
        train = data.to_iterable_dataset() if stream else data
        evals = held.to_iterable_dataset() if stream else held
        trainer = DPOTrainer(model, args=DPOConfig(**settings(tmp_path / str(stream), train_sampling_strategy="sequential")),
                             processing_class=tok, train_dataset=train, eval_dataset=evals)
        assert isinstance(trainer.train_dataset, IterableDataset) == stream
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        results.append((losses, trainer.evaluate()["eval_loss"], trainer.evaluate(eval_dataset=held.to_iterable_dataset())))
    (map_losses, map_eval, _), (stream_losses, stream_eval, stream_again) = results
    assert len(stream_losses) == 2 and stream_losses == pytest.approx(map_losses, rel=1e-5)
    assert stream_eval == pytest.approx(map_eval, rel=1e-5) and stream_again["eval_loss"] == pytest.approx(map_eval, rel=1e-5)


@pytest.mark.parametrize("kw, words", [
    (dict(max_steps=-1), "set max_steps"),
    (dict(precompute_ref_log_probs=True), "precompute_ref_log_probs=True"),
    (dict(group_by_length=True), "train_sampling_strategy='group_by_length' (group_by_length=True)"),
    (dict(skip_bad_rows=True), "skip_bad_rows=True"),
])
def test_what_a_stream_cannot_do_is_refused_in_one_sentence(tmp_path, kw, words):
    model, tok = tiny()
    with pytest.raises(ConfigError, match=r"stream \(datasets.IterableDataset\)") as err:
        DPOTrainer(model, args=DPOConfig(**settings(tmp_path, **kw)), processing_class=tok,
                   train_dataset=rows(8).to_iterable_dataset())
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_bad_row_in_a_stream_stops_the_run_naming_its_index(tmp_path):
    from preftune.errors import DataError

    good = rows(8).to_list()
    good[5] = {**good[5], "chosen": None}
    model, tok = tiny()
    trainer = ORPOTrainer(model, args=ORPOConfig(**settings(tmp_path)), processing_class=tok,
                          train_dataset=Dataset.from_list(good).to_iterable_dataset())  # nothing read yet
    with pytest.raises(DataError, match=r"row 5\b.*streamed train data"):
        trainer.train()


# ---------------------------------------------------------------- named eval sets


def test_named_eval_sets_are_each_evaluated_and_logged_under_their_name(tmp_path):
    model, tok = tiny()
    a, b = rows(4, "test"), rows(4, "test", start=4)
    args = DPOConfig(**settings(tmp_path, eval_strategy="steps", eval_steps=1))
    trainer = DPOTrainer(model, args=args, processing_class=tok, train_dataset=rows(8), eval_dataset={"a": a, "b": b})
    trainer.train()
    logged = [sorted(k for k in e if k.endswith("_loss") and k.startswith("eval")) for e in trainer.state.log_history]
    assert logged.count(["eval_a_loss"]) == 2 and logged.count(["eval_b_loss"]) == 2
    both = trainer.evaluate()
    assert both["eval_a_loss"] == pytest.approx(trainer.evaluate(eval_dataset=a)["eval_loss"], rel=1e-6)
    assert both["eval_b_loss"] == pytest.approx(trainer.evaluate(eval_dataset=b)["eval_loss"], rel=1e-6)
    raw = trainer.evaluate(eval_dataset={"x": a.to_list(), "y": b})  # raw rows too, named by the dict
    assert raw["eval_x_loss"] == pytest.approx(both["eval_a_loss"], rel=1e-6)
    assert raw["eval_y_loss"] == pytest.approx(both["eval_b_loss"], rel=1e-6)
    trainer.write_report(str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        keys = {k for line in f for k in json.loads(line)}
    assert {"eval_a_loss", "eval_b_loss"} <= keys
    card = (tmp_path / "README.md").read_text()
    assert "eval (a)" in card and "eval (b)" in card


def test_cli_named_eval_sets(tmp_path, monkeypatch):
    from preftune import cli
    from preftune.cli.args import named_eval_sets

    assert named_eval_sets(["a=x.jsonl", "b=y.jsonl,a=z.jsonl"]) == {"a": ["x.jsonl", "z.jsonl"], "b": ["y.jsonl"]}
    assert named_eval_sets(["x.jsonl", "y.jsonl"]) is None
    with pytest.raises(ConfigError, match="mixes named sets"):
        named_eval_sets(["a=x.jsonl", "y.jsonl"])
    data = rows(12).to_list()
    for name, part in (("train", data[:8]), ("a", data[8:10]), ("b", data[10:])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["dpo", "--model", tiny_model_path(), "--dataset", "train.jsonl", "--eval_dataset", "a=a.jsonl",
                     "b=b.jsonl", "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1",
                     "--per_device_train_batch_size", "4", "--output_dir", "out", "--report_to", "none",
                     "--save_strategy", "no"])
    assert code == 0
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        keys = {k for line in f for k in json.loads(line)}
    assert {"eval_a_loss", "eval_b_loss"} <= keys
    assert "eval (a)" in (tmp_path / "out" / "README.md").read_text()


# ------------------------------------------------- precomputed reference, sets seen late


def test_precomputed_reference_for_a_set_first_seen_at_evaluate(tmp_path):
    cache = tmp_path / "cache"
    model, tok = tiny()
    trainer = DPOTrainer(model, args=DPOConfig(**settings(tmp_path, precompute_ref_log_probs=True,
                                                          ref_logps_cache_dir=str(cache))),
                         processing_class=tok, train_dataset=rows(8))
    assert len(list(cache.iterdir())) == 1
    late = rows(4, "test")
    assert trainer.evaluate(eval_dataset=late.to_list())["eval_loss"] == pytest.approx(LOG2, abs=1e-6)
    assert len(list(cache.iterdir())) == 2  # computed with the policy (still the reference) and cached
    trainer.train()
    after = trainer.evaluate(eval_dataset=late.to_list())  # cached: usable after training
    assert math.isfinite(after["eval_loss"]) and after["eval_loss"] != pytest.approx(LOG2, abs=1e-4)
    with pytest.raises(ConfigError, match="first seen at evaluation, after training started"):
        trainer.evaluate(eval_dataset=rows(4, "test", start=4))


def test_precomputed_reference_for_a_late_set_with_peft_after_training(tmp_path):
    from preftune.train.reference import AdapterDisabledReference

    model, tok = tiny()
    args = DPOConfig(**settings(tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(tmp_path / "c")))
    trainer = DPOTrainer(model, args=args, processing_class=tok, train_dataset=rows(8),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert trainer.ref_model is None
    trainer.train()
    late = rows(4, "test")
    precomputed = trainer.evaluate(eval_dataset=late)["eval_loss"]
    trainer.reference = AdapterDisabledReference()  # the live reference: the base model, adapter off
    assert precomputed == pytest.approx(trainer.evaluate(eval_dataset=late)["eval_loss"], rel=1e-5)
    assert precomputed < LOG2


# ------------------------------------------------------------ construction, fields


def test_train_dataset_is_required(tmp_path):
    model, tok = tiny()
    with pytest.raises(ConfigError, match="train_dataset is required"):
        DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path)), processing_class=tok, eval_dataset=rows(4))


def test_trust_remote_code_reaches_model_reference_and_tokenizer(tmp_path, monkeypatch):
    import preftune.train.trainer as trainer_module

    seen = []
    real_model, real_tok = trainer_module.load_model, trainer_module.load_tokenizer
    monkeypatch.setattr(trainer_module, "load_model", lambda name, kw: seen.append(("model", dict(kw))) or real_model(name, kw))
    monkeypatch.setattr(trainer_module, "load_tokenizer",
                        lambda name, trust_remote_code=False: seen.append(("tok", trust_remote_code)) or real_tok(name))
    args = DPOConfig(output_dir=str(tmp_path), trust_remote_code=True, report_to="none")
    DPOTrainer(tiny_model_path(), ref_model=tiny_model_path(), args=args, train_dataset=rows(4))
    assert seen == [("model", {"trust_remote_code": True, "dtype": "float32"}), ("tok", True),
                    ("model", {"trust_remote_code": True, "dtype": "float32"})]


def test_a_model_by_name_loads_in_float32_unless_model_init_kwargs_says_otherwise(tmp_path):
    folder = tmp_path / "bf16"
    model, tok = tiny()
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    dpo = DPOTrainer(str(folder), args=DPOConfig(output_dir=str(tmp_path / "o")), train_dataset=rows(4))
    assert dpo.model.dtype == torch.float32  # TRL's DPOTrainer (create_model_from_path)
    kept = DPOTrainer(str(folder), args=DPOConfig(output_dir=str(tmp_path / "o"), model_init_kwargs={"dtype": "bfloat16"}),
                      train_dataset=rows(4))
    assert kept.model.dtype == torch.bfloat16
    orpo = ORPOTrainer(str(folder), args=ORPOConfig(output_dir=str(tmp_path / "o")), train_dataset=rows(4))
    assert orpo.model.dtype == torch.float32  # TRL's experimental ORPOTrainer keeps bf16 here: a departure on purpose
    from preftune import cli

    assert cli.parse_run("dpo", ["--model", "m"]).model_kwargs["dtype"] == "float32"  # TRL's CLI default
    assert cli.parse_run("dpo", ["--model", "m", "--dtype", "bf16", "--use_cpu", "true"]).model_kwargs["dtype"] == "bfloat16"


def test_pad_token_sets_the_tokenizers_pad_token(tmp_path):
    model, tok = tiny()
    token = tok.convert_ids_to_tokens(5)
    trainer = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path), pad_token=token, report_to="none"),
                         processing_class=tok, train_dataset=rows(4))
    assert tok.pad_token == token and trainer.data_collator.pad_token_id == 5
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 5).all()
    with pytest.raises(ConfigError, match="pad_token='<nope>' is not in the tokenizer's vocabulary"):
        DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path), pad_token="<nope>"), processing_class=tok,
                   train_dataset=rows(4))


def test_ref_model_and_aux_loss_enabled_attributes(tmp_path):
    model, tok = tiny()
    ref, _ = tiny()
    build = dict(processing_class=tok, train_dataset=rows(4))
    copy = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path), report_to="none"), **build)
    assert copy.ref_model is not None and copy.ref_model is not copy.model and copy.aux_loss_enabled is False
    assert DPOTrainer(tiny()[0], ref, args=DPOConfig(output_dir=str(tmp_path)), **build).ref_model is ref
    for kw in (dict(reference_free=True), dict(precompute_ref_log_probs=True, ref_logps_cache_dir=str(tmp_path / "c"))):
        assert DPOTrainer(tiny()[0], args=DPOConfig(output_dir=str(tmp_path), **kw), **build).ref_model is None
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    assert DPOTrainer(tiny()[0], args=DPOConfig(output_dir=str(tmp_path)), peft_config=lora, **build).ref_model is None
    assert ORPOTrainer(tiny()[0], args=ORPOConfig(output_dir=str(tmp_path)), **build).ref_model is None


TRL_SPECIFIC_EXCEPTIONS = {
    # preftune's default, and why it differs from TRL's
    "gradient_checkpointing": "TRL's base config turns it on; preftune leaves transformers' default (off): its "
                              "log-prob paths never hold the full logits, so the memory is rarely needed, and it re-runs the forward",
    "dataloader_pin_memory": "None = pin where there is an accelerator (pinning on CPU only makes PyTorch warn)",
    "remove_unused_columns": "preftune selects the columns it needs itself",
    "label_smoothing": "None resolves to 0, or to 1e-3 for exo_pair (which needs ε > 0)",
}
ADDED_ELSEWHERE: set[str] = set()  # every TRL 1.16 field exists in preftune's configs


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


@pytest.mark.parametrize("kind", ["dpo", "orpo"])
def test_every_trl_config_field_is_accepted_with_trls_default(tmp_path, kind):
    pytest.importorskip("trl")
    if kind == "dpo":
        from trl import DPOConfig as TRLConfig
        ours = DPOConfig
    else:
        from trl.experimental.orpo import ORPOConfig as TRLConfig
        ours = ORPOConfig
    theirs = {f.name: f for f in dataclasses.fields(TRLConfig) if f.init}
    mine = {f.name: f for f in dataclasses.fields(ours) if f.init}
    missing = sorted(set(theirs) - set(mine) - ADDED_ELSEWHERE)
    assert not missing, missing
    given = {n: _default(f) for n, f in theirs.items() if n in mine and _default(f) is not dataclasses.MISSING}
    given.update(output_dir=str(tmp_path), report_to="none")
    config = ours(**given)  # every TRL field name, with TRL's default value
    assert (config.learning_rate, config.beta, config.trust_remote_code) == (1e-6, 0.1, False)
    if kind == "dpo":
        assert (config.router_aux_loss_coef, config.pad_token) == (None, None)
    differ = {n for n in theirs if n in mine and _default(theirs[n]) != _default(mine[n])}
    assert differ <= set(TRL_SPECIFIC_EXCEPTIONS), sorted(differ - set(TRL_SPECIFIC_EXCEPTIONS))


def test_orpo_alpha_and_orpo_beta_say_that_lambda_is_beta():
    from preftune import cli

    with pytest.raises(TypeError) as err:  # a TypeError as a dataclass raises, and preftune's ConfigError
        ORPOConfig(output_dir="x", learning_rate=1e-5, orpo_alpha=1.0, orpo_beta=0.1)
    assert isinstance(err.value, ConfigError)
    text = str(err.value)
    assert "orpo_alpha" in text and "orpo_beta" in text and "`beta`" in text and "no temperature" in text
    with pytest.raises(ConfigError, match=r"unknown flag --orpo_alpha: ORPO's λ.*is `beta`.*use --beta"):
        cli.parse_run("orpo", ["--model", "m", "--orpo_alpha", "1.0"])
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        DPOConfig(output_dir="x", betta=0.1)


def test_orpo_with_beta_zero_is_plain_nll_on_chosen(tmp_path):
    model, tok = tiny()
    try:
        args = ORPOConfig(**settings(tmp_path, beta=0.0, per_device_train_batch_size=1))
    except ConfigError:  # the beta check is relaxed elsewhere; the trainer must take beta=0 all the same
        args = ORPOConfig(**settings(tmp_path, per_device_train_batch_size=1))
        args.beta = 0.0
    trainer = ORPOTrainer(model, args=args, processing_class=tok, train_dataset=rows(4))
    row = trainer.train_dataset[0]
    inputs = trainer._prepare_inputs(trainer.data_collator([row]))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, inputs)
        ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
        nll = model(input_ids=ids, labels=ids).loss  # mean NLL of prompt + chosen, as ORPO's default
    assert loss.item() == pytest.approx(nll.item(), rel=1e-5)
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


# ----------------------------------------------------------------------- MoE


def _moe(kind, tok, **cfg):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  num_experts_per_tok=2, **cfg)
    if kind == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(intermediate_size=64, num_local_experts=4, **common))
    return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(intermediate_size=64, moe_intermediate_size=32,
                                                    shared_expert_intermediate_size=32, num_experts=4, **common))


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("coef", [None, 0.5])
def test_dpo_adds_the_routers_aux_loss_as_trl(tmp_path, kind, coef):
    """TRL's DPO: on for any MoE model (router logits requested in the forward, the config's
    output_router_logits=False notwithstanding), weighted by router_aux_loss_coef or the config's own."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    model = _moe(kind, tok, router_aux_loss_coef=0.02)
    assert model.config.output_router_logits is False
    args = DPOConfig(**settings(tmp_path, router_aux_loss_coef=coef))
    trainer = DPOTrainer(model, args=args, processing_class=tok, train_dataset=rows(4))
    assert trainer.aux_loss_enabled is True and trainer.router_aux_loss_coef == (0.02 if coef is None else 0.5)
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    model.eval()
    with torch.no_grad():
        loss, metrics = trainer.compute_loss(model, inputs, return_outputs=True)
        trainer.aux_loss_enabled = False
        without = trainer.compute_loss(model, inputs)
        direct = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       output_router_logits=True).aux_loss  # the plain (2B, T) batch
    assert metrics["aux_loss"].item() == pytest.approx(direct.item(), rel=1e-5)
    assert loss.item() == pytest.approx(without.item() + trainer.router_aux_loss_coef * direct.item(), rel=1e-5)


def test_aux_loss_off_with_coef_zero_and_refused_on_a_dense_model(tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    off = DPOTrainer(_moe("mixtral", tok), args=DPOConfig(**settings(tmp_path, router_aux_loss_coef=0.0)),
                     processing_class=tok, train_dataset=rows(4))
    assert off.aux_loss_enabled is False
    orpo = ORPOTrainer(_moe("mixtral", tok), args=ORPOConfig(**settings(tmp_path)), processing_class=tok,
                       train_dataset=rows(4))
    assert orpo.aux_loss_enabled is False  # TRL's ORPO: only when the config sets output_router_logits
    with pytest.raises(ConfigError, match="router_aux_loss_coef=0.5 .* not a MoE model"):
        DPOTrainer(tiny()[0], args=DPOConfig(**settings(tmp_path, router_aux_loss_coef=0.5)), processing_class=tok,
                   train_dataset=rows(4))

