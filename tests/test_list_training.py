"""Training on list rows (issue 17) through the trainers: a pair given as a list of two trains exactly as the
pair (loss, gradient norm and every metric both log), for each family; precomputed references equal live ones;
the errors list rows get."""
import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, ORPOConfig, ORPOTrainer
from preftune.assets import tiny_model_path
from preftune.data.sources import load_preference_data
from preftune.errors import ConfigError

PAIRS = load_preference_data("tiny-prefs", "train").select(range(12))
LISTS_OF_TWO = [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]], "scores": [1.0, 0.0]}
                for r in PAIRS]


def model(noise_seed=None):
    m = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    if noise_seed is not None:  # a reference that differs from the policy, so rewards are not all zero
        g = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m


def build(trainer_cls, config_cls, data, tmp_path, **kw):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                    max_steps=2, logging_steps=1, save_strategy="no", report_to=[], learning_rate=1e-3, seed=0)
    args = config_cls(**{**settings, **kw})
    ref = model(1) if trainer_cls is DPOTrainer and not kw.get("reference_free") else None
    extra = {"ref_model": ref} if ref is not None else {}
    return trainer_cls(model=model(), args=args, train_dataset=data, eval_dataset=data,
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_path()), **extra)


def logged(trainer):
    """The per-step logs of a short run (the closing summary left out)."""
    trainer.train()
    return [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k}
            for h in trainer.state.log_history if "loss" in h]


FAMILIES = [
    (ORPOTrainer, ORPOConfig, {}),
    (ORPOTrainer, ORPOConfig, {"nll_completion_only": True}),
    (CPOTrainer, CPOConfig, {}),
    (CPOTrainer, CPOConfig, {"loss_type": "simpo", "cpo_alpha": 0.0}),
    (DPOTrainer, DPOConfig, {}),
    (DPOTrainer, DPOConfig, {"loss_type": "ipo"}),
    (DPOTrainer, DPOConfig, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}),
    (DPOTrainer, DPOConfig, {"use_weighting": True}),
]


@pytest.mark.parametrize("trainer_cls, config_cls, kw", FAMILIES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_pair_as_a_list_of_two_trains_as_the_pair(trainer_cls, config_cls, kw, tmp_path):
    pairs = build(trainer_cls, config_cls, PAIRS, tmp_path / "p", **kw)
    lists = build(trainer_cls, config_cls, datasets.Dataset.from_list(LISTS_OF_TWO), tmp_path / "l", **kw)
    assert not pairs.list_rows and lists.list_rows
    want, got = logged(pairs), logged(lists)
    assert len(want) == len(got) == 2
    for a, b in zip(want, got):
        for key, value in a.items():
            assert key in b, key
            assert b[key] == pytest.approx(value, rel=2e-5, abs=1e-6), key
    assert "rewards/ranking_accuracy" in got[0]  # lists log it; for lists of two it is the pair accuracy
    assert got[0]["rewards/ranking_accuracy"] == pytest.approx(got[0]["rewards/accuracies"])


def test_plackett_luce_on_pairs_equals_sigmoid(tmp_path):
    """A listwise loss turns pair rows into lists of two, where Plackett–Luce is sigmoid DPO."""
    sigmoid = build(DPOTrainer, DPOConfig, PAIRS, tmp_path / "s")
    pl = build(DPOTrainer, DPOConfig, PAIRS, tmp_path / "pl", loss_type="plackett_luce")
    assert pl.list_rows
    for a, b in zip(logged(sigmoid), logged(pl)):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_precomputed_reference_equals_live_reference_on_lists(tmp_path):
    short = [[{"role": "assistant", "content": r["chosen"][0]["content"].split(" ")[0]}] for r in PAIRS]
    rows = [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"], s], "scores": [2.0, 0.0, 1.0]}
            for r, s in zip(PAIRS, short)]
    data = datasets.Dataset.from_list(rows)
    live = build(DPOTrainer, DPOConfig, data, tmp_path / "live", loss_type="lipo")
    pre = build(DPOTrainer, DPOConfig, data, tmp_path / "pre", loss_type="lipo", precompute_ref_log_probs=True,
                ref_logps_cache_dir=str(tmp_path / "cache"))
    assert "ref_completion_logps" in pre.train_dataset.column_names
    for a, b in zip(logged(live), logged(pre)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize("kw, match", [
    ({"list_pairs": "some"}, "list_pairs='some' is not known"),
    ({"loss_type": ["plackett_luce", "sigmoid"]}, "cannot be combined"),
    ({"loss_type": "lipo", "rpo_alpha": 1.0}, "rpo_alpha applies to pairwise losses"),
    ({"loss_type": "plackett_luce", "list_pairs": "all"}, "list_pairs applies to pairwise losses"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        DPOConfig(output_dir="x", **kw)


def test_ld_alpha_is_refused_on_lists(tmp_path):
    with pytest.raises(ConfigError, match="ld_alpha"):
        build(DPOTrainer, DPOConfig, datasets.Dataset.from_list(LISTS_OF_TWO), tmp_path, ld_alpha=0.5)


def test_kto_refuses_lists(tmp_path):
    with pytest.raises(ConfigError, match="KTO does not train"):
        build(KTOTrainer, KTOConfig, datasets.Dataset.from_list(LISTS_OF_TWO), tmp_path)


def graded_lists():
    short = [[{"role": "assistant", "content": r["chosen"][0]["content"].split(" ")[0]}] for r in PAIRS]
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completions": [r["chosen"], s, r["rejected"]],
                                        "scores": [2.0, 1.0, 0.0]} for r, s in zip(PAIRS, short)])


@pytest.mark.parametrize("flags", [{"logps_prefix_sharing": False}, {"logps_prefix_sharing": False, "padding_free": True},
                                   {"padding_free": True}])
def test_lists_train_the_same_whichever_log_prob_path(flags, tmp_path):
    """Prefix-shared packed rows (the default) equal each answer in its own row, padded or padding-free."""
    shared = build(ORPOTrainer, ORPOConfig, graded_lists(), tmp_path / "shared", list_pairs="all")
    other = build(ORPOTrainer, ORPOConfig, graded_lists(), tmp_path / "other", list_pairs="all", **flags)
    assert shared.logps_path.kind == "prefix-shared"
    for a, b in zip(logged(shared), logged(other)):
        for key in ("loss", "grad_norm", "rewards/accuracies", "rewards/ranking_accuracy", "nll_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_gradient_accumulation_on_lists(tmp_path):
    """4 prompts × 1 step equals 1 prompt × 4 accumulated steps: ORPO's NLL is one token mean over the window."""
    one = build(ORPOTrainer, ORPOConfig, graded_lists(), tmp_path / "a", per_device_train_batch_size=4,
                gradient_accumulation_steps=1)
    four = build(ORPOTrainer, ORPOConfig, graded_lists(), tmp_path / "b", per_device_train_batch_size=1,
                 gradient_accumulation_steps=4)
    for a, b in zip(logged(one), logged(four)):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
