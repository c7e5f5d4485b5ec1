"""Loss functions against values derived by hand (see each docstring)."""
import math
import subprocess
import sys

import pytest
import torch

from preftune.losses import DPO_LOSSES, DPOInputs, DPOParams, log1mexp, orpo_loss, sigmoid_loss


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_losses_module_does_not_import_transformers():
    code = "import sys, preftune.losses; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_log1mexp_matches_naive_and_stays_finite():
    x = t(-1e-3, -0.5, -0.7, -5.0, -40.0)
    assert torch.allclose(log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-10)
    # at and above 0 the naive form is -inf/NaN; ours is finite
    edge = log1mexp(t(0.0, -1e-12, 1e-3))
    assert torch.isfinite(edge).all()
    assert torch.allclose(edge, torch.full((3,), math.log(1e-6), dtype=torch.float64), rtol=1e-5)


def test_orpo_loss_hand_derived():
    """p_c = 0.5 -> odds 1, log-odds 0; p_r = 0.2 -> odds 0.25, log-odds log(1/4).
    log_odds = log 4 = 1.386294; log σ(log 4) = log(4/5) = -0.223144.
    nll = 2.0, beta = 0.1 -> loss = 2.0 + 0.1 * 0.223144 = 2.0223144.
    rewards: 0.1·log 0.5 = -0.0693147, 0.1·log 0.2 = -0.1609438.
    """
    a_c = t(math.log(0.5)).requires_grad_()
    out = orpo_loss(a_c, t(math.log(0.2)), t(2.0), beta=0.1)
    assert out.log_odds.item() == pytest.approx(math.log(4), abs=1e-9)
    assert out.log_sigmoid_log_odds.item() == pytest.approx(math.log(0.8), abs=1e-9)
    assert out.losses.item() == pytest.approx(2.0223144, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(-0.0693147, abs=1e-7)
    assert out.rejected_rewards.item() == pytest.approx(-0.1609438, abs=1e-7)
    # d log_odds / d a_c = 1/(1-p) = 2; dL/da_c = -beta·σ(-log 4)·2 = -0.1·0.2·2 = -0.04
    out.losses.sum().backward()
    assert a_c.grad.item() == pytest.approx(-0.04, abs=1e-9)


def test_orpo_loss_no_nan_near_zero_logp():
    a_c = torch.tensor([0.0, -1e-9, -1e-4], requires_grad=True)
    out = orpo_loss(a_c, torch.tensor([-1.0, -1.0, -1.0]), torch.zeros(3), beta=1.0)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(a_c.grad).all()


def test_orpo_loss_is_per_pair():
    out = orpo_loss(t(math.log(0.5), math.log(0.2)), t(math.log(0.2), math.log(0.5)), t(1.0, 3.0), beta=1.0)
    # pair 2 is pair 1 with chosen/rejected swapped: log-odds are ±log 4
    assert torch.allclose(out.log_odds, t(math.log(4), -math.log(4)))
    assert torch.allclose(out.losses, t(1 - math.log(0.8), 3 - math.log(0.2)))


def dpo_inputs(pc, pr, rc, rr, lc=1.0, lr=1.0):
    return DPOInputs(t(pc), t(pr), t(rc), t(rr), t(lc), t(lr))


def test_dpo_sigmoid_hand_derived():
    """π_c - ref_c = -10 - (-12) = 2, π_r - ref_r = -15 - (-14) = -1, h = 3, β = 0.5.
    L = -log σ(1.5) = log(1 + e^-1.5) = 0.2014133; rewards 0.5·2 = 1.0, 0.5·(-1) = -0.5.
    cDPO ε = 0.1: 0.9·0.2014133 + 0.1·log(1 + e^1.5) = 0.9·0.2014133 + 0.1·1.7014133 = 0.3514133.
    """
    x = dpo_inputs(-10.0, -15.0, -12.0, -14.0)
    out = sigmoid_loss(x, DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.2014133, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(1.0)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)
    smoothed = sigmoid_loss(x, DPOParams(beta=0.5, label_smoothing=0.1))
    assert smoothed.losses.item() == pytest.approx(0.3514133, abs=1e-7)


def test_dpo_sigmoid_at_reference_is_log2():
    """Policy equal to reference: h = 0, L = -log σ(0) = log 2 for any β."""
    out = sigmoid_loss(dpo_inputs(-3.0, -7.0, -3.0, -7.0), DPOParams(beta=0.3))
    assert out.losses.item() == pytest.approx(math.log(2))
    assert out.chosen_rewards.item() == 0.0


def test_dpo_table_has_sigmoid():
    assert DPO_LOSSES["sigmoid"] is sigmoid_loss
