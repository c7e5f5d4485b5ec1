"""preftune against TRL 1.16: one training step of each library on the same model and rows, the
first logged loss and every metric both log compared (rel 1e-5).

Skipped unless TRL 1.16 is installed (`scripts/install.sh --test` installs it with --no-deps).
The tokenized ids of both libraries are checked equal first: a difference there would make every
later comparison meaningless. Built once per module: the tiny model's weights (a policy and a
perturbed reference, so the log-ratios are not 0), the tokenizer, the rows.
"""
import copy
import math

import pytest
import torch

trl = pytest.importorskip("trl")
if not trl.__version__.startswith("1.16"):
    pytest.skip(f"TRL {trl.__version__} installed; these tests pin TRL 1.16", allow_module_level=True)

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer  # noqa: E402
from preftune.assets import tiny_model_path  # noqa: E402

# Timings, and values that are not computed from the step (TRL's own bookkeeping).
_NOT_COMPARED = {"epoch", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                 "train_loss", "step"}
# Compared by name: TRL's log keys for DPO; preftune must log each of these.
DPO_KEYS = {"loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "mean_token_accuracy", "logits/chosen",
            "logits/rejected", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected"}

# Three string rows of different lengths (batch-token means differ from per-pair means).
STRING_ROWS = {
    "prompt": ["Which sound do you hear from a hyena?", "Can you tell me what 5 plus 20 is?",
               "Name a colour."],
    "chosen": [" A hyena says laugh! Learning is fun!", " Adding 5 and 20 gives us 25, nice and easy!", " Blue."],
    "rejected": [" It says laugh.", " It is 25. Try to remember it next time, please.", " I will not."],
}
# ChatML without the newline after <|im_end|> (the EOS): nothing follows the EOS.
NO_TRAILING_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
                        "message['content'] + '<|im_end|>' }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def conversational_rows():
    def msg(role, text):
        return [{"role": role, "content": text.strip()}]

    return {"prompt": [msg("user", p) for p in STRING_ROWS["prompt"]],
            "chosen": [msg("assistant", c) for c in STRING_ROWS["chosen"]],
            "rejected": [msg("assistant", r) for r in STRING_ROWS["rejected"]]}


@pytest.fixture(scope="module")
def weights():
    """(policy state, reference state): the tiny model, and a copy with every weight perturbed."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float32)
    policy = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return policy, copy.deepcopy(model.state_dict())


def _model(state):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float32)
    model.load_state_dict(state)
    return model


def _tokenizer(template=None):
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    if template is not None:
        tok.chat_template = template
    return tok


COMMON = dict(learning_rate=1e-3, logging_steps=1, max_steps=1, per_device_train_batch_size=3,
              gradient_checkpointing=False, report_to="none", use_cpu=True, save_strategy="no", seed=0,
              lr_scheduler_type="constant", dataloader_drop_last=False,
              bf16=False)  # TRL 1.16 defaults to bf16 (autocast even on CPU); float32 here


def _first_log(trainer):
    trainer.train()
    return next(e for e in trainer.state.log_history if "loss" in e)


def _tokens(dataset):
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in dataset]


def run_dpo(tmp_path, weights, rows, template=None, trl_extra=None, **settings):
    """One step in each library; returns (trl log, preftune log, trl trainer, preftune trainer)."""
    from trl import DPOConfig as TRLConfig, DPOTrainer as TRLTrainer

    policy, ref = weights
    reference_free = settings.pop("reference_free", False)
    data = Dataset.from_dict(rows)
    trl_settings = {**COMMON, **settings, **(trl_extra or {})}
    theirs = TRLTrainer(model=_model(policy), ref_model=_model(ref),
                        args=TRLConfig(output_dir=str(tmp_path / "trl"), **trl_settings),
                        processing_class=_tokenizer(template), train_dataset=data)
    if reference_free:  # TRL 1.16 has no reference_free: zero "precomputed" reference log-probs are the same
        n = len(theirs.train_dataset)
        theirs.train_dataset = theirs.train_dataset.add_column("ref_chosen_logps", [0.0] * n).add_column(
            "ref_rejected_logps", [0.0] * n)
        theirs.precompute_ref_logps = True
    ours = DPOTrainer(model=_model(policy), ref_model=None if reference_free else _model(ref),
                      args=DPOConfig(output_dir=str(tmp_path / "preftune"), reference_free=reference_free,
                                     **COMMON, **settings),
                      processing_class=_tokenizer(template), train_dataset=data)
    return theirs, ours


def assert_same_step(theirs, ours, keys):
    assert _tokens(ours.train_dataset) == _tokens(theirs.train_dataset)  # same token ids, or nothing else counts
    want, got = _first_log(theirs), _first_log(ours)
    assert keys <= set(want), sorted(set(want))
    for key in sorted(set(want) - _NOT_COMPARED):
        assert key in got, f"preftune does not log {key}"
        assert same(key, got[key], want[key]), (key, got[key], want[key])
    return want, got


def same(key, got, want):
    """rel 1e-5; abs 1e-6 for values that are differences of ~50-nat float32 sums (rewards: β·(policy -
    reference), where the summation order alone moves the last bits); grad_norm rel 1e-4 (a float32
    norm of ~10^4-10^7 accumulated in another order)."""
    return got == pytest.approx(want, rel=1e-4 if key == "grad_norm" else 1e-5, abs=1e-6)


# exp((α-1)·r) and exp(-r) of ~10-nat log-ratios amplify that float32 summation noise: rel 5e-5 for the loss.
EXPONENTIAL = ("forward_kl", "alpha0.5", "alpha1.7")


# One test id per configuration. label_smoothing only where TRL 1.16's loss uses it.
DPO_CASES = {
    "sigmoid": dict(loss_type="sigmoid"),
    "hinge": dict(loss_type="hinge"),
    "ipo": dict(loss_type="ipo"),
    "exo_pair": dict(loss_type="exo_pair", label_smoothing=1e-3),
    "exo_pair-ls0.2": dict(loss_type="exo_pair", label_smoothing=0.2),
    "nca_pair": dict(loss_type="nca_pair"),
    "robust": dict(loss_type="robust"),
    "robust-ls0.1": dict(loss_type="robust", label_smoothing=0.1),
    "bco_pair": dict(loss_type="bco_pair"),
    "sppo_hard": dict(loss_type="sppo_hard"),
    "aot": dict(loss_type="aot"),
    "aot-ls0.1": dict(loss_type="aot", label_smoothing=0.1),
    "aot_unpaired": dict(loss_type="aot_unpaired"),
    "aot_unpaired-ls0.1": dict(loss_type="aot_unpaired", label_smoothing=0.1),
    "apo_zero": dict(loss_type="apo_zero"),
    "apo_down": dict(loss_type="apo_down"),
    "discopop": dict(loss_type="discopop"),
    "sft": dict(loss_type="sft"),
    "sigmoid_norm": dict(loss_type="sigmoid_norm"),
    "sigmoid+sft": dict(loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.3]),
    # WPO with sft is not compared: TRL 1.16 fails on it (an in-place product on the expanded sft loss).
    "use_weighting": dict(loss_type="sigmoid", use_weighting=True),
    "use_weighting-ipo": dict(loss_type="ipo", use_weighting=True),
    "ld_alpha": dict(loss_type="sigmoid", ld_alpha=0.4),
    "ld_alpha+sft": dict(loss_type=["sigmoid", "sft"], ld_alpha=0.4),
    "reference_free": dict(loss_type="sigmoid", reference_free=True),
    "beta0.5": dict(loss_type="sigmoid", beta=0.5),
}
for _kind in ("forward_kl", "js_divergence"):
    DPO_CASES[f"sigmoid-{_kind}"] = dict(loss_type="sigmoid", f_divergence_type=_kind)
for _alpha in (0.5, 1.0, 1.7):
    DPO_CASES[f"sigmoid-alpha{_alpha}"] = dict(loss_type="sigmoid", f_divergence_type="alpha_divergence",
                                               f_alpha_divergence_coef=_alpha)
for _loss in ("hinge", "ipo", "sigmoid_norm", "discopop", "robust", "sft"):
    DPO_CASES[f"{_loss}-forward_kl"] = dict(loss_type=_loss, f_divergence_type="forward_kl")
DPO_CASES["ipo-alpha0.5"] = dict(loss_type="ipo", f_divergence_type="alpha_divergence")
DPO_CASES["exo_pair-js"] = dict(loss_type="exo_pair", label_smoothing=1e-3, f_divergence_type="js_divergence")


@pytest.mark.parametrize("case", sorted(DPO_CASES))
def test_dpo_step_equals_trl(tmp_path, weights, case):
    theirs, ours = run_dpo(tmp_path, weights, STRING_ROWS, **DPO_CASES[case])
    if any(kind in case for kind in EXPONENTIAL):
        want, got = _first_log(theirs), _first_log(ours)
        assert got["loss"] == pytest.approx(want["loss"], rel=5e-5)
        return
    assert_same_step(theirs, ours, DPO_KEYS)


def test_rpo_alpha_is_sft_with_that_weight(tmp_path, weights):
    """rpo_alpha (older TRL) equals TRL 1.16's loss_type=[sigmoid, sft], loss_weights=[1, α]."""
    theirs, ours = run_dpo(tmp_path, weights, STRING_ROWS, loss_type="sigmoid",
                           trl_extra=dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7]))
    ours = DPOTrainer(model=_model(weights[0]), ref_model=_model(weights[1]),
                      args=DPOConfig(output_dir=str(tmp_path / "rpo"), rpo_alpha=0.7, **COMMON),
                      processing_class=_tokenizer(), train_dataset=Dataset.from_dict(STRING_ROWS))
    assert_same_step(theirs, ours, DPO_KEYS)


def test_cdpo_label_smoothing_is_kept_where_trl_1_16_ignores_it(tmp_path, weights):
    """TRL's DPO documentation shows cDPO (sigmoid + label_smoothing); TRL 1.16's code ignores ε for
    sigmoid. preftune keeps cDPO: TRL with ε = 0.1 equals preftune with ε = 0, and preftune's ε = 0.1
    loss is the smoothed one, (1-ε)·(-log σ(βh)) + ε·(-log σ(-βh)), from the same first-step margin."""
    theirs, ours = run_dpo(tmp_path, weights, STRING_ROWS, loss_type="sigmoid", trl_extra=dict(label_smoothing=0.1))
    want, _ = assert_same_step(theirs, ours, DPO_KEYS)  # ours at ε = 0
    smoothed = DPOTrainer(model=_model(weights[0]), ref_model=_model(weights[1]),
                          args=DPOConfig(output_dir=str(tmp_path / "cdpo"), label_smoothing=0.1, **COMMON),
                          processing_class=_tokenizer(), train_dataset=Dataset.from_dict(STRING_ROWS))
    got = _first_log(smoothed)
    assert got["rewards/margins"] == pytest.approx(want["rewards/margins"], rel=1e-5, abs=1e-6)
    assert got["loss"] != pytest.approx(want["loss"], rel=1e-3)


def test_conversational_rows_without_text_after_the_eos(tmp_path, weights):
    theirs, ours = run_dpo(tmp_path, weights, conversational_rows(), template=NO_TRAILING_TEMPLATE)
    assert_same_step(theirs, ours, DPO_KEYS)


def test_chatml_trailing_newline_is_not_trained_on(tmp_path, weights):
    """ChatML puts "\\n" after <|im_end|> (the EOS): TRL 1.16 keeps it in the completion and trains
    on it, preftune stops each completion at its EOS on purpose (the newline is never generated).
    The token ids differ by that last token; the numbers differ (NOTES-i15-losses.md has them)."""
    theirs, ours = run_dpo(tmp_path, weights, conversational_rows())
    newline = _tokenizer().encode("\n", add_special_tokens=False)
    eos = _tokenizer().eos_token_id
    for (_, tc, tr), (_, oc, orj) in zip(_tokens(theirs.train_dataset), _tokens(ours.train_dataset)):
        assert tc == oc + newline and tr == orj + newline and oc[-1] == eos
    want, got = _first_log(theirs), _first_log(ours)
    assert got["num_tokens"] == want["num_tokens"] - 2 * len(STRING_ROWS["prompt"])
    # TRL's sums include log p("\n" | EOS) < 0 (about -4e-5 nats with the bundled model, which learned it)
    assert got["logps/chosen"] > want["logps/chosen"] and got["logps/rejected"] > want["logps/rejected"]
    print("chatml trailing newline: trl", {k: want[k] for k in sorted(DPO_KEYS)},
          "preftune", {k: got[k] for k in sorted(DPO_KEYS)})


# ---------------------------------------------------------------------------------------- ORPO

ORPO_KEYS = {"loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"}
# TRL's ORPO averages logits/* over every position of the padded rows (prompt and padding too);
# preftune's are DPO's token-weighted completion means (a departure, in the notes).
ORPO_DEPARTURES = {"logits/chosen", "logits/rejected"}


@pytest.mark.parametrize("beta", [0.1, 0.0])
def test_orpo_step_equals_trl(tmp_path, weights, beta):
    from trl.experimental.orpo import ORPOConfig as TRLConfig, ORPOTrainer as TRLTrainer

    settings = dict(COMMON, beta=beta, max_length=128)
    data = Dataset.from_dict(STRING_ROWS)
    theirs = TRLTrainer(model=_model(weights[0]), args=TRLConfig(output_dir=str(tmp_path / "trl"), **settings),
                        processing_class=_tokenizer(), train_dataset=data)
    ours = ORPOTrainer(model=_model(weights[0]), args=ORPOConfig(output_dir=str(tmp_path / "ours"), max_prompt_length=64,
                                                                 **settings),
                       processing_class=_tokenizer(), train_dataset=data)
    for theirs_row, (p, c, r) in zip(theirs.train_dataset, _tokens(ours.train_dataset)):
        assert theirs_row["chosen_input_ids"] == p + c and theirs_row["rejected_input_ids"] == p + r
    want, got = _first_log(theirs), _first_log(ours)
    assert ORPO_KEYS <= set(want)
    for key in sorted(set(want) - _NOT_COMPARED - ORPO_DEPARTURES):
        assert key in got, f"preftune does not log {key}"
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (key, got[key], want[key])
    assert math.isfinite(got["logits/chosen"])
    print("orpo logits departure: trl", want["logits/chosen"], want["logits/rejected"],
          "preftune", got["logits/chosen"], got["logits/rejected"])


# ----------------------------------------------------------------------------------------- CPO

CPO_KEYS = {"loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected", "nll_loss", "logits/chosen", "logits/rejected"}
# TRL's CPO averages logits/* over every position of the padded rows (prompt and padding too), as its ORPO;
# preftune's are the token-weighted completion means (a departure, in the notes).
CPO_DEPARTURES = {"logits/chosen", "logits/rejected"}
CPO_CASES = {
    "sigmoid": dict(loss_type="sigmoid"),
    "sigmoid-ls0.1": dict(loss_type="sigmoid", label_smoothing=0.1),
    "sigmoid-nll0": dict(loss_type="sigmoid", cpo_alpha=0.0),
    "sigmoid-alpha-0.1": dict(loss_type="sigmoid", alpha=-0.1, beta=0.5),
    "hinge": dict(loss_type="hinge"),
    "hinge-nll0": dict(loss_type="hinge", cpo_alpha=0.0, beta=0.01),
    "ipo": dict(loss_type="ipo"),
    "ipo-nll0": dict(loss_type="ipo", cpo_alpha=0.0),
    "simpo": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0),
    "simpo-ls0.1": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0, label_smoothing=0.1),
    "simpo-nll0": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0),
    "alphapo": dict(loss_type="alphapo", alpha=0.25, beta=2.0, simpo_gamma=1.0),
    "alphapo-ls0.1": dict(loss_type="alphapo", alpha=-0.5, beta=2.0, label_smoothing=0.1),
}


@pytest.mark.parametrize("case", sorted(CPO_CASES))
def test_cpo_step_equals_trl(tmp_path, weights, case):
    from trl.experimental.cpo import CPOConfig as TRLConfig, CPOTrainer as TRLTrainer

    from preftune import CPOConfig, CPOTrainer

    settings = dict(COMMON, max_length=128, **CPO_CASES[case])
    data = Dataset.from_dict(STRING_ROWS)
    theirs = TRLTrainer(model=_model(weights[0]), args=TRLConfig(output_dir=str(tmp_path / "trl"), **settings),
                        processing_class=_tokenizer(), train_dataset=data)
    ours = CPOTrainer(model=_model(weights[0]), args=CPOConfig(output_dir=str(tmp_path / "ours"), **settings),
                      processing_class=_tokenizer(), train_dataset=data)
    for theirs_row, (p, c, r) in zip(theirs.train_dataset, _tokens(ours.train_dataset)):
        assert theirs_row["chosen_input_ids"] == p + c and theirs_row["rejected_input_ids"] == p + r
    want, got = _first_log(theirs), _first_log(ours)
    assert CPO_KEYS <= set(want), sorted(want)
    for key in sorted(set(want) - _NOT_COMPARED - CPO_DEPARTURES):
        assert key in got, f"preftune does not log {key}"
        assert same(key, got[key], want[key]), (key, got[key], want[key])
    assert math.isfinite(got["logits/chosen"])
    print(f"cpo {case}: trl", {k: want[k] for k in sorted(CPO_KEYS)}, "preftune", {k: got[k] for k in sorted(CPO_KEYS)})


# ----------------------------------------------------------------------------------------- KTO

KTO_KEYS = {"loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "kl", "logits/chosen", "logits/rejected",
            "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}

# Unpaired rows, both labels in the one batch of 4 (TRL's KL completions rotate inside it).
UNPAIRED_ROWS = {
    "prompt": STRING_ROWS["prompt"] + ["Say hello."],
    "completion": [STRING_ROWS["chosen"][0], STRING_ROWS["rejected"][1], STRING_ROWS["chosen"][2], " No."],
    "label": [True, False, True, False],
}

KTO_CASES = {
    "kto": dict(loss_type="kto"),
    "apo_zero_unpaired": dict(loss_type="apo_zero_unpaired"),
    "kto-weights": dict(loss_type="kto", desirable_weight=1.3, undesirable_weight=0.7),
    "apo_zero_unpaired-weights": dict(loss_type="apo_zero_unpaired", desirable_weight=0.6, undesirable_weight=1.4),
    "kto-beta0.5": dict(loss_type="kto", beta=0.5),
    "kto-precompute": dict(loss_type="kto", precompute_ref_log_probs=True),
    "kto-max_length": dict(loss_type="kto", max_length=14),  # completions and KL completions cut
}


def _kto_tokens(dataset, trl: bool):
    if trl:
        return [(r["prompt_ids"], r["completion_ids"], r.get("KL_completion_ids"), r["label"]) for r in dataset]
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], r["label"]) for r in dataset]


def run_kto(tmp_path, weights, rows, template=None, batch_size=4, **settings):
    from trl import KTOConfig as TRLConfig, KTOTrainer as TRLTrainer

    from preftune import KTOConfig, KTOTrainer

    policy, ref = weights
    data = Dataset.from_dict(rows)
    common = {**COMMON, "per_device_train_batch_size": batch_size}
    theirs = TRLTrainer(model=_model(policy), ref_model=_model(ref),
                        args=TRLConfig(output_dir=str(tmp_path / "trl"), **common, **settings),
                        processing_class=_tokenizer(template), train_dataset=data)
    ours = KTOTrainer(model=_model(policy), ref_model=_model(ref),
                      args=KTOConfig(output_dir=str(tmp_path / "preftune"), **common, **settings),
                      processing_class=_tokenizer(template), train_dataset=data)
    want_ids, got_ids = _kto_tokens(theirs.train_dataset, True), _kto_tokens(ours.train_dataset, False)
    if settings.get("loss_type") == "apo_zero_unpaired":  # TRL builds no KL completions then; ours are unused
        want_ids, got_ids = [w[:2] + w[3:] for w in want_ids], [g[:2] + g[3:] for g in got_ids]
    else:  # TRL cuts the KL row in its collator: compare what it trains on
        limit = settings.get("max_length", 1024)
        want_ids = [(p, c[:limit - len(p)], kl[:limit - len(p)], lab) for p, c, kl, lab in want_ids]
    assert got_ids == want_ids  # same token ids (and KL completions, labels), or nothing else counts
    want, got = _first_log(theirs), _first_log(ours)
    assert KTO_KEYS <= set(want), sorted(set(want))
    scale = settings.get("beta", 0.1) / 0.1  # rewards are β·(policy - reference): β scales their float32 noise
    for key in sorted(set(want) - _NOT_COMPARED):
        assert key in got, f"preftune does not log {key}"
        if key.startswith("rewards/"):  # margins: the difference of two such means, twice the noise
            tol = 1e-6 * max(scale, 1) * (2 if key == "rewards/margins" else 1)
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=tol), (key, got[key], want[key])
        else:
            assert same(key, got[key], want[key]), (key, got[key], want[key])
    assert set(got) - _NOT_COMPARED <= set(want) | {"skipped_steps"}, sorted(set(got) - set(want))
    return want, got


@pytest.mark.parametrize("case", sorted(KTO_CASES))
def test_kto_step_equals_trl(tmp_path, weights, case):
    want, _ = run_kto(tmp_path, weights, UNPAIRED_ROWS, **KTO_CASES[case])
    if case in ("kto", "kto-weights"):
        assert want["kl"] > 0  # the KL term is live (not clamped to 0) here
    if case == "kto-max_length":
        assert want["kl"] == 0  # here the mean log-ratio of the cut KL rows is negative: clamped


def test_kto_paired_rows_are_unpaired_as_trl(tmp_path, weights):
    """Paired rows: each pair split into a desirable and an undesirable row, in TRL's order; one batch of 6."""
    run_kto(tmp_path, weights, STRING_ROWS, batch_size=6, loss_type="kto", desirable_weight=1.2)


def test_kto_two_kl_blocks(tmp_path, weights):
    """6 unpaired rows in batches of 3 (max_steps=1 trains the first): the KL rotation is per block of 3."""
    run_kto(tmp_path, weights, {k: v + v[:2] for k, v in UNPAIRED_ROWS.items()}, batch_size=3, loss_type="kto")


def test_kto_conversational_rows(tmp_path, weights):
    conv = conversational_rows()
    rows = {"prompt": conv["prompt"] + conv["prompt"][:1], "completion": conv["chosen"] + conv["rejected"][:1],
            "label": [True, False, True, False]}
    run_kto(tmp_path, weights, rows, template=NO_TRAILING_TEMPLATE, loss_type="kto")
