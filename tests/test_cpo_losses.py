"""The CPO family's losses (preftune.losses.cpo) against values derived by hand.

One pair throughout: log π(y_w) = -4 over |y_w| = 4 tokens (mean -1), log π(y_l) = -6 over
|y_l| = 2 tokens (mean -3). Summed margin h = 2, averaged margin h̄ = -1 - (-3) = 2.
  log σ(1) = -0.3132617  log σ(-1) = -1.3132617  log σ(0.5) = -0.4740770  log σ(-0.5) = -0.9740770
  log σ(3) = -0.0485874  e^0.5 = 1.6487213  e^1.5 = 4.4816891  e^-2 = 0.1353353  e^-3 = 0.0497871
"""
import pytest
import torch

from preftune.losses import CPO_LOSSES, CPOParams, alphapo_reward, cpo_hinge_loss, cpo_ipo_loss, cpo_sigmoid_loss, simpo_loss


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


PAIR = (t(-4.0), t(-6.0), t(4.0), t(2.0))  # chosen sum, rejected sum, chosen length, rejected length


def check(out, loss, chosen_reward, rejected_reward, chosen_logps, rejected_logps):
    assert out.losses.item() == pytest.approx(loss, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(chosen_reward, abs=1e-7)
    assert out.rejected_rewards.item() == pytest.approx(rejected_reward, abs=1e-7)
    assert (out.chosen_logps.item(), out.rejected_logps.item()) == pytest.approx((chosen_logps, rejected_logps))


def test_sigmoid_compares_sums():
    # β = 0.5: -log σ(0.5·2) = 0.3132617; rewards β·sum = -2, -3
    check(cpo_sigmoid_loss(*PAIR, CPOParams(beta=0.5)), 0.3132617, -2.0, -3.0, -4.0, -6.0)


def test_sigmoid_label_smoothing():
    # 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617
    check(cpo_sigmoid_loss(*PAIR, CPOParams(beta=0.5, label_smoothing=0.1)), 0.4132617, -2.0, -3.0, -4.0, -6.0)


def test_hinge_compares_sums():
    # β = 0.25: max(0, 1 - 0.25·2) = 0.5; β = 0.5: max(0, 1 - 1) = 0
    check(cpo_hinge_loss(*PAIR, CPOParams(beta=0.25)), 0.5, -1.0, -1.5, -4.0, -6.0)
    assert cpo_hinge_loss(*PAIR, CPOParams(beta=0.5)).losses.item() == 0.0


def test_ipo_compares_means():
    # β = 0.5: (h̄ - 1/(2·0.5))² = (2 - 1)² = 1; rewards β·mean = -0.5, -1.5
    check(cpo_ipo_loss(*PAIR, CPOParams(beta=0.5)), 1.0, -0.5, -1.5, -1.0, -3.0)
    # β = 0.25: (2 - 2)² = 0
    assert cpo_ipo_loss(*PAIR, CPOParams(beta=0.25)).losses.item() == pytest.approx(0.0, abs=1e-12)


def test_simpo():
    # β = 0.5, γ = 0.5: -log σ(0.5·(2 - 0.5/0.5)) = -log σ(0.5) = 0.4740770
    check(simpo_loss(*PAIR, CPOParams(beta=0.5, simpo_gamma=0.5)), 0.4740770, -0.5, -1.5, -1.0, -3.0)
    # label smoothing 0.1: 0.9·0.4740770 + 0.1·0.9740770 = 0.5240770
    check(simpo_loss(*PAIR, CPOParams(beta=0.5, simpo_gamma=0.5, label_smoothing=0.1)), 0.5240770, -0.5, -1.5, -1.0, -3.0)
    # ms-swift's defaults β = 2, γ = 1: -log σ(2·2 - 1) = -log σ(3) = 0.0485874; rewards -2, -6
    check(simpo_loss(*PAIR, CPOParams(beta=2.0, simpo_gamma=1.0)), 0.0485874, -2.0, -6.0, -1.0, -3.0)


def test_alphapo_is_simpo_with_alphapo_rewards():
    # α = 0.5 on the means: r_w = (1 - e^{0.5·1})/0.5 = 2(1 - 1.6487213) = -1.2974425,
    # r_l = 2(1 - e^{1.5}) = -6.9633781; β = 0.5, γ = 0.5: z = 0.5·(5.6659356 - 1) = 2.3329678,
    # loss = log(1 + e^-2.3329678) = 0.0925859; rewards β·r = -0.6487213, -3.4816891
    out = CPO_LOSSES["alphapo"](*PAIR, CPOParams(beta=0.5, simpo_gamma=0.5, alpha=0.5))
    check(out, 0.0925859, -0.6487213, -3.4816891, -1.0, -3.0)


def test_alpha_applies_to_sigmoid_sums():
    # α = -0.5 on the sums: r_w = (1 - e^{-2})/(-0.5) = -1.7293294, r_l = (1 - e^{-3})/(-0.5) = -1.9004259;
    # β = 0.5: -log σ(0.5·0.1710964) = -log σ(0.0855482) = 0.6512876
    out = cpo_sigmoid_loss(*PAIR, CPOParams(beta=0.5, alpha=-0.5))
    check(out, 0.6512876, -0.8646647, -0.9502129, -4.0, -6.0)


def test_alphapo_reward_tends_to_log_p():
    x = t(-0.1, -1.0, -5.0)
    assert torch.equal(alphapo_reward(x, 0.0), x)
    assert torch.allclose(alphapo_reward(x, 1e-7), x, atol=1e-5)
    # far below float32's smallest p (e^-200 = 0): still finite (TRL's p^-α is inf there)
    assert torch.isfinite(alphapo_reward(torch.tensor([-200.0]), 0.4)).all()


def test_every_loss_type_is_tested():
    assert set(CPO_LOSSES) == {"sigmoid", "hinge", "ipo", "simpo", "alphapo"}


def test_gradient_of_sigmoid():
    # d/dc of -log σ(β(c - r)) = -β·σ(-β h) = -0.5·σ(-1) = -0.5·0.2689414 = -0.1344707
    c = t(-4.0).requires_grad_()
    cpo_sigmoid_loss(c, t(-6.0), t(4.0), t(2.0), CPOParams(beta=0.5)).losses.sum().backward()
    assert c.grad.item() == pytest.approx(-0.1344707, abs=1e-7)
