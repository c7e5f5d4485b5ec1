"""KTO: the loss by hand, the unpaired rows' layout (KL rotation, unpairing order, truncation), the config's
errors, the collator's labels and the logged metrics' shape. Parity with TRL: tests/test_trl_parity.py."""
import logging

import pytest
import torch
from transformers import AutoTokenizer

from preftune import ConfigError, DataError, KTOConfig
from preftune.assets import tiny_model_path
from preftune.data.pairs import PreferencePair
from preftune.data.unpaired import (UnpairedCollator, kl_rotation, prepare_unpaired, unpair, unpaired_row)
from preftune.losses import kl_estimate, kl_reference_point, kto_loss, weighting_rule

POLICY = torch.tensor([-10.0, -12.0, -8.0])
REF = torch.tensor([-11.0, -11.0, -11.0])  # log-ratios r = [1, -1, 3]
LABELS = torch.tensor([True, False, False])


def test_kto_loss_by_hand():
    """β = 0.5, z₀ = 0.4, λ_D = 1.5, λ_U = 0.5:
    row 0 (D): 1.5·(1 − σ(0.5·(1 − 0.4)))  = 1.5·(1 − σ(0.3))  = 0.6383362247825115
    row 1 (U): 0.5·(1 − σ(0.5·(0.4 + 1)))  = 0.5·(1 − σ(0.7))  = 0.16590611391591692
    row 2 (U): 0.5·(1 − σ(0.5·(0.4 − 3)))  = 0.5·(1 − σ(-1.3)) = 0.3929174915212793
    loss = their mean = 0.3990532767399026; rewards β·r = [0.5, -0.5, 1.5]."""
    out = kto_loss(POLICY.double(), REF.double(), LABELS, 0.4, 0.5, "kto", 1.5, 0.5)
    assert out.losses.tolist() == pytest.approx([0.6383362247825115, 0.16590611391591692, 0.3929174915212793], rel=1e-12)
    assert out.losses.mean().item() == pytest.approx(0.3990532767399026, rel=1e-12)
    assert out.rewards.tolist() == [0.5, -0.5, 1.5]


def test_apo_zero_unpaired_loss_by_hand():
    """No z₀ (the 0.4 given is ignored): D: 1.5·(1 − σ(0.5)) = 0.566311003197218;
    U: 0.5·σ(-0.5) = 0.1887703343990727 and 0.5·σ(1.5) = 0.4087872380968218; mean 0.3879561918977042."""
    out = kto_loss(POLICY.double(), REF.double(), LABELS, 0.4, 0.5, "apo_zero_unpaired", 1.5, 0.5)
    assert out.losses.tolist() == pytest.approx([0.566311003197218, 0.1887703343990727, 0.4087872380968218], rel=1e-12)
    assert out.losses.mean().item() == pytest.approx(0.3879561918977042, rel=1e-12)


def test_kto_gradient_flows_to_the_policy_only_through_the_rows():
    policy = POLICY.clone().requires_grad_(True)
    kto_loss(policy, REF, LABELS, torch.tensor(0.4), 0.5).losses.mean().backward()
    # d/dr (1 − σ(β(r − z))) = −β σ'(·) < 0 for D rows: raising a desirable row's log-prob lowers the loss
    assert policy.grad[0] < 0 and policy.grad[1] > 0 and policy.grad[2] > 0


def test_kl_reference_point():
    """Mismatched rows: policy [-9, -13], reference [-10, -10]: log-ratios [1, -3], mean -1.
    Across processes the means are averaged, then clamped at 0."""
    local = kl_estimate(torch.tensor([-9.0, -13.0]), torch.tensor([-10.0, -10.0]))
    assert local.item() == -1.0 and not local.requires_grad
    assert kl_reference_point(torch.tensor([-1.0, 0.5])).item() == 0.0  # mean -0.25, clamped
    assert kl_reference_point(torch.tensor([1.0, 0.5])).item() == 0.75


def test_weighting_rule():
    """λ_D·n_D / (λ_U·n_U) in [1, 4/3] (KTO paper, eq. 8)."""
    assert weighting_rule(3, 1, 1.0, 1.0) == (3.0, False)
    ratio, inside = weighting_rule(2, 3, 1.6, 1.0)
    assert ratio == pytest.approx(3.2 / 3) and inside
    assert weighting_rule(1, 1, 1.0, 1.0) == (1.0, True)


def test_kl_rotation_is_per_block():
    """TRL 1.16: row i of a block gets row i-1's completion, the block's first row its last row's."""
    assert kl_rotation(4, 4) == [3, 0, 1, 2]
    assert kl_rotation(5, 2) == [1, 0, 3, 2, 4]  # the last block of one row keeps its own completion


def test_pairs_are_unpaired_in_trl_order():
    pairs = [PreferencePair(f"p{i}", f"c{i}", f"r{i}") for i in range(3)]
    rows = unpair(pairs, block=2)
    assert [(r.pair.prompt, r.pair.chosen, r.desirable) for r in rows] == [
        ("p0", "c0", True), ("p1", "c1", True), ("p0", "r0", False), ("p1", "r1", False),
        ("p2", "c2", True), ("p2", "r2", False)]
    assert all(r.pair.chosen == r.pair.rejected for r in rows)


def test_unpaired_row_errors_name_the_row_and_field():
    with pytest.raises(DataError, match=r"row 3: field 'label' is str 'yes', not a bool"):
        unpaired_row({"prompt": "p", "completion": "c", "label": "yes"}, 3)
    with pytest.raises(DataError, match=r"row 1: field 'completion' has an empty completion"):
        unpaired_row({"prompt": "p", "completion": "  ", "label": True}, 1)
    with pytest.raises(DataError, match=r"row 0: has no 'prompt' column"):
        unpaired_row({"completion": "c", "label": True}, 0)
    row = unpaired_row({"prompt": "p", "completion": "c", "label": 0}, 0)
    assert row.desirable is False and row.pair.chosen == row.pair.rejected == "c"


def test_prepare_unpaired_ids_truncation_and_report():
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    rows = [{"prompt": "Name a colour.", "completion": " Blue.", "label": True},
            {"prompt": "Say hello.", "completion": " Hello there, how are you today?", "label": False},
            {"prompt": "A very long prompt " * 10, "completion": " x", "label": True}]
    free, _ = prepare_unpaired(rows, tok, max_length=None, kl_block=2)
    data, report = prepare_unpaired(rows, tok, max_length=12, kl_block=2)
    assert (report.n_rows, report.n_kept, report.n_dropped_long_prompt) == (3, 2, 1)  # the long prompt is dropped
    assert (report.n_desirable, report.n_undesirable) == (1, 1)
    for i, row in enumerate(data):
        room = 12 - len(row["prompt_ids"])
        assert row["chosen_ids"] == free[i]["chosen_ids"][:room]
        assert row["rejected_ids"] == free[1 - i]["chosen_ids"][:room]  # block of 2: the other row's completion
    assert data["label"] == [True, False]
    assert free[0]["chosen_ids"][-1] == tok.eos_token_id and free[0]["prompt_ids"][0] == tok.bos_token_id
    cut = sum(len(free[i]["chosen_ids"]) > 12 - len(data[i]["prompt_ids"]) for i in range(2))
    assert cut >= 1 and report.n_truncated == cut and "1 desirable, 1 undesirable" in report.summary()


def test_collator_adds_labels():
    batch = UnpairedCollator(pad_token_id=0)([
        {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5], "label": True},
        {"prompt_ids": [6], "chosen_ids": [7, 8], "rejected_ids": [3], "label": False}])
    assert batch["label"].tolist() == [True, False]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 3, 0, 0]]


@pytest.mark.parametrize("settings, message", [
    (dict(loss_type="sigmoid"), "loss_type='sigmoid' is not a KTO loss"),
    (dict(train_sampling_strategy="random"), "needs train_sampling_strategy='sequential'"),
    (dict(per_device_train_batch_size=1), "needs per_device_train_batch_size of 2 or more"),
    (dict(max_prompt_length=8), "max_prompt_length, max_completion_length and truncation_mode cannot be set"),
    (dict(desirable_weight=0.0), "desirable_weight=0.0 must be positive"),
    (dict(sync_ref_model=True, precompute_ref_log_probs=True), "drop one of sync_ref_model"),
])
def test_config_errors(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        KTOConfig(output_dir=str(tmp_path), use_cpu=True, **settings)


def test_config_defaults_are_trls(tmp_path):
    c = KTOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (c.beta, c.loss_type, c.desirable_weight, c.undesirable_weight, c.max_length, c.learning_rate) == (
        0.1, "kto", 1.0, 1.0, 1024, 1e-6)
    assert (c.precompute_ref_log_probs, c.sync_ref_model, c.ref_model_mixup_alpha, c.ref_model_sync_steps) == (
        False, False, 0.6, 512)
    assert c.train_sampling_strategy == "sequential" and c.disable_dropout
    # apo_zero_unpaired has no KL term: any sampler, any batch size
    KTOConfig(output_dir=str(tmp_path), use_cpu=True, loss_type="apo_zero_unpaired", per_device_train_batch_size=1,
              train_sampling_strategy="random")


def test_imbalance_is_logged_with_the_numbers(tmp_path, caplog):
    from preftune.data.unpaired import UnpairedReport
    from preftune.train.kto import log_weighting

    report = UnpairedReport(8, 8, 8, 6, 2, 0, 0)
    with caplog.at_level(logging.INFO, logger="preftune.train.kto"):
        log_weighting(report, 1.0, 1.0)
    assert "1·6 / (1·2) = 3.000" in caplog.text and caplog.records[-1].levelname == "WARNING"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="preftune.train.kto"):
        log_weighting(report, 0.4, 1.0)  # 2.4 / 2 = 1.2: inside
    assert "= 1.200" in caplog.text and caplog.records[-1].levelname == "INFO"


def test_data_inspect_reports_the_balance(tmp_path, capsys):
    import json

    from preftune import cli

    rows = [{"prompt": "Hi.", "completion": " Hello!", "label": True}, {"prompt": "Bye.", "completion": " No.", "label": False},
            {"prompt": "Yo.", "completion": " Yes.", "label": True}]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert cli.main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "desirable: 2  undesirable: 1" in out and "= 2.000 at weights 1; outside [1, 4/3]" in out
    assert "--desirable_weight in [0.50, 0.67]" in out


def test_cli_kto_flags_and_unpaired_file(tmp_path):
    import json

    from preftune import cli
    from preftune.cli.args import config_class

    assert config_class("kto") is KTOConfig
    run = cli.parse_run("kto", ["--desirable_weight", "1.3", "--loss_type", "apo_zero_unpaired"])
    assert (run.config.desirable_weight, run.config.loss_type, run.config.beta) == (1.3, "apo_zero_unpaired", 0.5)
    rows = [{"prompt": f"Q{i}?", "completion": f" A{i}.", "label": i % 2 == 0} for i in range(4)]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    code = cli.main(["kto", "--model", tiny_model_path(), "--dataset", str(path), "--max_steps", "1",
                     "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true",
                     "--report_to", "none", "--save_strategy", "no"])
    assert code == 0 and (tmp_path / "out" / "config.json").exists()
