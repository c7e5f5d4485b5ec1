"""Loss functions against values derived by hand (see each docstring).

Most DPO cases share one pair, written out once here:
  log πθ(yc) = -10, log πθ(yr) = -15, log πref(yc) = -12, log πref(yr) = -14, |yc| = 4, |yr| = 2
  rc = -10 - (-12) = 2,  rr = -15 - (-14) = -1,  h = rc - rr = 3
Values used below (σ(z) = 1/(1+e^-z), log σ(z) = -log(1+e^-z)):
  σ(0.5) = 0.6224593  σ(1) = 0.7310586  σ(1.5) = 0.8175745   σ(-z) = 1 - σ(z)
  log σ(0.5) = -0.4740770  log σ(-0.5) = -0.9740770  log σ(1) = -0.3132617  log σ(-1) = -1.3132617
  log σ(1.5) = -0.2014133  log σ(-1.5) = -1.7014133   σ'(z) = σ(z)σ(-z)
"""
import math
import subprocess
import sys

import pytest
import torch

from preftune.losses import (
    DPO_LOSSES,
    F_DIVERGENCE_LOSSES,
    F_DIVERGENCES,
    DPOInputs,
    DPOLossOutput,
    DPOParams,
    combine,
    f_divergence_logits,
    f_divergence_scores,
    log1mexp,
    orpo_loss,
    sigmoid_loss,
)

# Names of DPO_LOSSES entries that have a hand-derived test (filled by @covers at import).
_COVERED: set[str] = set()


def covers(*names):
    def mark(fn):
        _COVERED.update(names)
        return fn

    return mark


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


def test_orpo_loss_takes_the_batch_nll_as_a_scalar():
    """TRL's NLL is one token mean for the batch: a scalar 2.0 broadcast over both pairs.
    losses = 2 - log σ(±log 4) = [2 - log 0.8, 2 - log 0.2] = [2.2231436, 3.6094379];
    β = 0: the loss is the NLL alone (plain SFT)."""
    chosen, rejected = t(math.log(0.5), math.log(0.2)), t(math.log(0.2), math.log(0.5))
    out = orpo_loss(chosen, rejected, t(2.0).reshape(()), beta=1.0)
    assert torch.allclose(out.losses, t(2.2231436, 3.6094379), atol=1e-7)
    assert torch.equal(orpo_loss(chosen, rejected, t(2.0).reshape(()), beta=0.0).losses, t(2.0, 2.0))


def dpo_inputs(pc, pr, rc, rr, lc=1.0, lr=1.0):
    return DPOInputs(t(pc), t(pr), t(rc), t(rr), t(lc), t(lr))


@covers("sigmoid")
def test_dpo_sigmoid_hand_derived():
    """π_c - ref_c = -10 - (-12) = 2, π_r - ref_r = -15 - (-14) = -1, h = 3, β = 0.5.
    L = -log σ(1.5) = log(1 + e^-1.5) = 0.2014133; rewards 0.5·2 = 1.0, 0.5·(-1) = -0.5.
    cDPO ε = 0.1: 0.9·0.2014133 + 0.1·log(1 + e^1.5) = 0.9·0.2014133 + 0.1·1.7014133 = 0.3514133
    (TRL's documentation shows cDPO; TRL 1.16's code ignores ε for sigmoid, i.e. our ε = 0).
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


# ------------------------------------------------------------------ the DPO family


def shared_pair(requires_grad=False):
    """The pair of the module docstring; returns (inputs, policy_chosen, policy_rejected) leaves."""
    pc = t(-10.0).requires_grad_(requires_grad)
    pr = t(-15.0).requires_grad_(requires_grad)
    return DPOInputs(pc, pr, t(-12.0), t(-14.0), t(4.0), t(2.0)), pc, pr


def leaf_pair(pc, pr, rc, rr):
    """One pair of length-1 completions whose policy log-probs are gradient leaves."""
    pc, pr = t(pc).requires_grad_(), t(pr).requires_grad_()
    return DPOInputs(pc, pr, t(rc), t(rr), t(1.0), t(1.0)), pc, pr


def loss_and_grads(name, params, batch=None):
    """Per-pair loss (B,) and d(sum of losses)/d(log πθ(yc)), d/d(log πθ(yr))."""
    x, pc, pr = batch if batch is not None else shared_pair(requires_grad=True)
    out = DPO_LOSSES[name](x, params)
    out.losses.sum().backward()
    zero = torch.zeros_like(pc)
    return out, (pc.grad if pc.grad is not None else zero), (pr.grad if pr.grad is not None else zero)


def assert_rewards_are_beta_logratios(out, beta):
    """Rewards β·rc = 2β and β·rr = -β on the shared pair; detached."""
    assert out.chosen_rewards.item() == pytest.approx(2 * beta)
    assert out.rejected_rewards.item() == pytest.approx(-beta)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_sigmoid_gradient_sign():
    """dL/dlog πθ(yc) = -β·σ(-β·h) = -0.5·σ(-1.5) = -0.5·0.1824255 = -0.0912128; rejected: +0.0912128."""
    out, gc, gr = loss_and_grads("sigmoid", DPOParams(beta=0.5))
    assert gc.item() == pytest.approx(-0.0912128, abs=1e-7)
    assert gr.item() == pytest.approx(0.0912128, abs=1e-7)
    assert_rewards_are_beta_logratios(out, 0.5)


@covers("hinge")
def test_hinge_hand_derived():
    """β = 0.2: β·h = 0.6, L = max(0, 1 - 0.6) = 0.4; dL/dπc = -β = -0.2, dL/dπr = +0.2.
    β = 0.5: β·h = 1.5 ≥ 1, the margin is met: L = 0 and the gradient is 0.
    At the reference (h = 0): L = 1.
    """
    out, gc, gr = loss_and_grads("hinge", DPOParams(beta=0.2))
    assert out.losses.item() == pytest.approx(0.4)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.2), pytest.approx(0.2))
    assert_rewards_are_beta_logratios(out, 0.2)
    out, gc, gr = loss_and_grads("hinge", DPOParams(beta=0.5))
    assert out.losses.item() == 0.0 and gc.item() == 0.0 and gr.item() == 0.0
    at_ref = DPO_LOSSES["hinge"](dpo_inputs(-3.0, -7.0, -3.0, -7.0), DPOParams(beta=0.5))
    assert at_ref.losses.item() == pytest.approx(1.0)


@covers("ipo")
def test_ipo_averages_log_ratios_per_token():
    """|yc| = 4, |yr| = 2: h_avg = rc/4 - rr/2 = 2/4 + 1/2 = 1.0 (the summed h would be 3).
    β = 1: target 1/(2β) = 0.5, L = (1 - 0.5)² = 0.25 (with summed log-probs: (3 - 0.5)² = 6.25).
    dL/dπc = 2·(h_avg - 0.5)·(1/4) = 0.25 > 0: above the target IPO pulls the margin back;
    dL/dπr = 2·0.5·(-1/2) = -0.5.
    Rewards are β·(summed) log-ratios, as TRL 1.16 logs for every loss: β·rc = 2, β·rr = -1.
    β = 0.25: target 2, L = (1 - 2)² = 1, dL/dπc = 2·(-1)/4 = -0.5 < 0, dL/dπr = 2·(-1)·(-1/2) = +1.
    """
    out, gc, gr = loss_and_grads("ipo", DPOParams(beta=1.0))
    assert out.losses.item() == pytest.approx(0.25)
    assert (gc.item(), gr.item()) == (pytest.approx(0.25), pytest.approx(-0.5))
    assert_rewards_are_beta_logratios(out, 1.0)
    out, gc, gr = loss_and_grads("ipo", DPOParams(beta=0.25))
    assert out.losses.item() == pytest.approx(1.0)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.5), pytest.approx(1.0))


def test_ipo_with_empty_completion_counts_one_token():
    """|yc| = 0 is clamped to 1: h_avg = 2/1 - (-1)/2 = 2.5; β = 1: (2.5 - 0.5)² = 4."""
    x = dpo_inputs(-10.0, -15.0, -12.0, -14.0, lc=0.0, lr=2.0)
    assert DPO_LOSSES["ipo"](x, DPOParams(beta=1.0)).losses.item() == pytest.approx(4.0)


@covers("exo_pair")
def test_exo_pair_hand_derived():
    """β = 0.5, ε = 0.1: z = β·h = 1.5, σ(z) = 0.8175745, σ(-z) = 0.1824255.
    L = 0.8175745·(-0.2014133 - log 0.9) + 0.1824255·(-1.7014133 - log 0.1)
      = 0.8175745·(-0.2014133 + 0.1053605) + 0.1824255·(-1.7014133 + 2.3025851)
      = -0.0785303 + 0.1096691 = 0.0311388
    dL/dz = σ'(z)·(z - log((1-ε)/ε)) = 0.1491465·(1.5 - 2.1972246) < 0 since σ(z) < 1-ε;
    dL/dπc = β·dL/dz = 0.5·0.1491465·(-0.6972246) = -0.0519943; dL/dπr = +0.0519943.
    At σ(z) = 1 - ε (z = log 9) the loss is its minimum, KL = 0.
    """
    out, gc, gr = loss_and_grads("exo_pair", DPOParams(beta=0.5, label_smoothing=0.1))
    assert out.losses.item() == pytest.approx(0.0311388, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.0519943, abs=1e-7), pytest.approx(0.0519943, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)
    at_min = DPO_LOSSES["exo_pair"](dpo_inputs(math.log(9), 0.0, 0.0, 0.0), DPOParams(beta=1.0, label_smoothing=0.1))
    assert at_min.losses.item() == pytest.approx(0.0, abs=1e-12)


def test_exo_pair_needs_positive_epsilon():
    with pytest.raises(ValueError, match="label_smoothing"):
        DPO_LOSSES["exo_pair"](shared_pair()[0], DPOParams(beta=0.5, label_smoothing=0.0))


@covers("nca_pair")
def test_nca_pair_hand_derived():
    """β = 0.5: β·rc = 1, β·rr = -0.5.
    L = -log σ(1) - ½·log σ(-1) - ½·log σ(0.5) = 0.3132617 + 0.6566308 + 0.2370385 = 1.2069310
    dL/dπc = β·(-σ(-1) + ½·σ(1)) = 0.5·(-0.2689414 + 0.3655293) = +0.0482939 (past its optimum β·rc = log 2);
    dL/dπr = β·½·σ(β·rr) = 0.25·σ(-0.5) = 0.25·0.3775407 = +0.0943852.
    At the reference (r = 0): dL/dπc = β·(-½ + ¼) = -0.125 (raises the chosen), dL/dπr = β·¼ = +0.125;
    at β·rc = log 2 (σ = 2/3) the chosen gradient is β·(-1/3 + 1/3) = 0.
    """
    out, gc, gr = loss_and_grads("nca_pair", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(1.2069310, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(0.0482939, abs=1e-7), pytest.approx(0.0943852, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)
    _, gc, gr = loss_and_grads("nca_pair", DPOParams(beta=0.5), leaf_pair(-3.0, -7.0, -3.0, -7.0))
    assert (gc.item(), gr.item()) == (pytest.approx(-0.125), pytest.approx(0.125))
    _, gc, _ = loss_and_grads("nca_pair", DPOParams(beta=0.5), leaf_pair(2 * math.log(2), 0.0, 0.0, 0.0))
    assert gc.item() == pytest.approx(0.0, abs=1e-12)


@covers("robust")
def test_robust_hand_derived():
    """β = 0.5, ε = 0.1, z = 1.5:
    L = (-0.9·log σ(1.5) + 0.1·log σ(-1.5)) / (1 - 0.2) = (0.1812720 - 0.1701413) / 0.8 = 0.0139133
    dL/dπc = β·(-0.9·σ(-1.5) - 0.1·σ(1.5)) / 0.8 = 0.5·(-0.1641830 - 0.0817574)/0.8 = -0.1537128; dπr: +.
    ε = 0: the plain DPO loss -log σ(1.5) = 0.2014133.
    """
    out, gc, gr = loss_and_grads("robust", DPOParams(beta=0.5, label_smoothing=0.1))
    assert out.losses.item() == pytest.approx(0.0139133, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.1537128, abs=1e-7), pytest.approx(0.1537128, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)
    plain = DPO_LOSSES["robust"](shared_pair()[0], DPOParams(beta=0.5))
    assert plain.losses.item() == pytest.approx(0.2014133, abs=1e-7)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPO_LOSSES["robust"](shared_pair()[0], DPOParams(beta=0.5, label_smoothing=0.5))


@covers("bco_pair")
def test_bco_pair_hand_derived():
    """TRL 1.16, no reward shift δ. β = 0.5: β·rc = 1, β·rr = -0.5.
    L = -log σ(1) - log σ(0.5) = 0.3132617 + 0.4740770 = 0.7873387
    dL/dπc = -β·σ(-1) = -0.5·0.2689414 = -0.1344707;  dL/dπr = β·σ(-0.5) = 0.5·0.3775407 = +0.1887703.
    """
    out, gc, gr = loss_and_grads("bco_pair", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.7873387, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.1344707, abs=1e-7), pytest.approx(0.1887703, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)


@covers("sppo_hard")
def test_sppo_hard_hand_derived():
    """β = 1: 1/(2β) = 0.5 on the raw log-ratios rc = 2, rr = -1:
    L = (2 - 0.5)² + (-1 + 0.5)² = 2.25 + 0.25 = 2.5
    dL/dπc = 2·1.5 = 3 (rc overshoots its target ½ and is pulled back), dL/dπr = 2·(-0.5) = -1.
    At the reference: dL/dπc = 2·(0 - 0.5) = -1 < 0, dL/dπr = 2·(0 + 0.5) = +1.
    """
    out, gc, gr = loss_and_grads("sppo_hard", DPOParams(beta=1.0))
    assert out.losses.item() == pytest.approx(2.5)
    assert (gc.item(), gr.item()) == (pytest.approx(3.0), pytest.approx(-1.0))
    assert_rewards_are_beta_logratios(out, 1.0)
    _, gc, gr = loss_and_grads("sppo_hard", DPOParams(beta=1.0), leaf_pair(-3.0, -7.0, -3.0, -7.0))
    assert (gc.item(), gr.item()) == (pytest.approx(-1.0), pytest.approx(1.0))


def three_pairs(requires_grad=False):
    """πc = [-5, -6, -4], πr = [-6, -4, -7]  -> πc - πr     = [1, -2, 3]
    refc = [-5, -7, -6], refr = [-7, -7, -5] -> refc - refr = [2, 0, -1]
    rc = [0, 1, 2], rr = [1, 3, -2]."""
    pc = t(-5.0, -6.0, -4.0).requires_grad_(requires_grad)
    pr = t(-6.0, -4.0, -7.0).requires_grad_(requires_grad)
    return DPOInputs(pc, pr, t(-5.0, -7.0, -6.0), t(-7.0, -7.0, -5.0), t(1.0, 1.0, 1.0), t(1.0, 1.0, 1.0)), pc, pr


@covers("aot")
def test_aot_sorts_the_two_margins_independently():
    """three_pairs, β = 1: sort(πc - πr) = [-2, 1, 3], sort(refc - refr) = [-1, 0, 2], Δ = [-1, 1, 1]
    (per pair h would be [-1, -2, 4]).
    ε = 0:   L = [-log σ(-1), -log σ(1), -log σ(1)] = [1.3132617, 0.3132617, 0.3132617]
    ε = 0.1: L[0] = 0.9·1.3132617 + 0.1·0.3132617 = 1.2132617;
             L[1] = L[2] = 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617
    Gradient (ε = 0.1), dL/dΔ = -0.9·σ(-Δ) + 0.1·σ(Δ):
    at Δ = -1: -0.9·0.7310586 + 0.1·0.2689414 = -0.6310586;
    at Δ = 1: -0.9·0.2689414 + 0.1·0.7310586 = -0.1689414. Sorted position 0 holds pair 1 (margin -2),
    position 1 pair 0, position 2 pair 2: dL/dπc = [-0.1689414, -0.6310586, -0.1689414], dL/dπr = minus that.
    Rewards stay per pair: β·rc = [0, 1, 2], β·rr = [1, 3, -2].
    """
    out = DPO_LOSSES["aot"](three_pairs()[0], DPOParams(beta=1.0))
    assert torch.allclose(out.losses, t(1.3132617, 0.3132617, 0.3132617), atol=1e-7)
    batch = three_pairs(requires_grad=True)
    out, gc, gr = loss_and_grads("aot", DPOParams(beta=1.0, label_smoothing=0.1), batch)
    assert torch.allclose(out.losses, t(1.2132617, 0.4132617, 0.4132617), atol=1e-7)
    assert torch.allclose(gc, t(-0.1689414, -0.6310586, -0.1689414), atol=1e-7)
    assert torch.allclose(gr, -gc)
    assert torch.equal(out.chosen_rewards, t(0.0, 1.0, 2.0)) and torch.equal(out.rejected_rewards, t(1.0, 3.0, -2.0))


@covers("aot_unpaired", "aot_pair")
def test_aot_unpaired_sorts_chosen_and_rejected_log_ratios_independently():
    """rc = [1, -1, 0.5], rr = [0, 2, -1] (reference log-probs 0), β = 1:
    sort(rc) = [-1, 0.5, 1], sort(rr) = [-1, 0, 2], Δ = [0, 0.5, -1]  (per pair h would be [1, -3, 1.5]).
    L = [-log σ(0), -log σ(0.5), -log σ(-1)] = [0.6931472, 0.4740770, 1.3132617]
    Gradient, dL/dΔ = -β·σ(-β·Δ) and Δ = sort(rc) - sort(rr):
    position 1 holds chosen pair 2 (rc = 0.5, Δ = 0.5): dL/dπc[2] = -σ(-0.5) = -0.3775407;
    position 2 holds rejected pair 1 (rr = 2, Δ = -1):  dL/dπr[1] = +σ(1) = +0.7310586.
    """
    pc = t(1.0, -1.0, 0.5).requires_grad_()
    pr = t(0.0, 2.0, -1.0).requires_grad_()
    zeros, ones = t(0.0, 0.0, 0.0), t(1.0, 1.0, 1.0)
    assert DPO_LOSSES["aot_pair"] is DPO_LOSSES["aot_unpaired"]  # older TRL's name
    out, gc, gr = loss_and_grads("aot_unpaired", DPOParams(beta=1.0),
                                 (DPOInputs(pc, pr, zeros, zeros, ones, ones), pc, pr))
    assert torch.allclose(out.losses, t(0.6931472, 0.4740770, 1.3132617), atol=1e-7)
    assert gc[2].item() == pytest.approx(-0.3775407, abs=1e-7)
    assert gr[1].item() == pytest.approx(0.7310586, abs=1e-7)
    assert (gc <= 0).all() and (gr >= 0).all()


@covers("apo_zero")
def test_apo_zero_hand_derived():
    """β = 0.5: β·rc = 1, β·rr = -0.5.
    L = (1 - σ(1)) + σ(-0.5) = 0.2689414 + 0.3775407 = 0.6464821
    dL/dπc = -β·σ'(1) = -0.5·0.1966119 = -0.0983060; dL/dπr = β·σ'(-0.5) = 0.5·0.2350037 = +0.1175019.
    At the reference: L = 0.5 + 0.5 = 1.
    """
    out, gc, gr = loss_and_grads("apo_zero", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.6464821, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.0983060, abs=1e-7), pytest.approx(0.1175019, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)
    at_ref = DPO_LOSSES["apo_zero"](dpo_inputs(-3.0, -7.0, -3.0, -7.0), DPOParams(beta=0.5))
    assert at_ref.losses.item() == pytest.approx(1.0)


@covers("apo_down")
def test_apo_down_hand_derived():
    """β = 0.5: β·rc = 1, β·h = 1.5.
    L = σ(1) + (1 - σ(1.5)) = 0.7310586 + 0.1824255 = 0.9134841
    dL/dπc = β·(σ'(1) - σ'(1.5)) = 0.5·(0.1966119 - 0.1491465) = +0.0237327 (lowers the chosen);
    dL/dπr = β·σ'(1.5) = 0.5·0.1491465 = +0.0745732 (lowers the rejected, more).
    """
    out, gc, gr = loss_and_grads("apo_down", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.9134841, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(0.0237327, abs=1e-7), pytest.approx(0.0745732, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)


@covers("discopop")
def test_discopop_hand_derived():
    """β = 0.5, τ = 1.5: l = β·h = 1.5, m = σ(l/τ) = σ(1) = 0.7310586.
    L = -log σ(1.5)·(1 - m) + e^-1.5·m = 0.2014133·0.2689414 + 0.2231302·0.7310586
      = 0.0541684 + 0.1631212 = 0.2172896
    At the reference (l = 0): m = ½ for any τ, L = ½·log 2 + ½·1 = 0.8465736.
    The gradient lowers the loss as h grows: dL/dπc < 0 < dL/dπr.
    """
    out, gc, gr = loss_and_grads("discopop", DPOParams(beta=0.5, discopop_tau=1.5))
    assert out.losses.item() == pytest.approx(0.2172896, abs=1e-7)
    assert gc.item() < 0 < gr.item() and gc.item() == pytest.approx(-gr.item())
    assert_rewards_are_beta_logratios(out, 0.5)
    at_ref = DPO_LOSSES["discopop"](dpo_inputs(-3.0, -7.0, -3.0, -7.0), DPOParams(beta=0.5))
    assert at_ref.losses.item() == pytest.approx(0.8465736, abs=1e-7)


def test_discopop_is_finite_for_very_negative_margins():
    """l = 0.5·(-2000) = -1000 in float32: e^1000 overflows, but m = σ(-1000/0.05) underflows;
    the loss is -log σ(-1000)·1 + 0 = 1000, not inf·0 = NaN."""
    x = DPOInputs(*(torch.tensor([v], dtype=torch.float32) for v in (-2000.0, 0.0, 0.0, 0.0, 1.0, 1.0)))
    out = DPO_LOSSES["discopop"](x, DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(1000.0)


@covers("sigmoid_norm")
def test_sigmoid_norm_hand_derived():
    """h_norm = rc/|yc| - rr/|yr| = 2/4 + 1/2 = 1; β = 0.5: L = -log σ(0.5) = 0.4740770
    dL/dπc = -β·σ(-0.5)/|yc| = -0.5·0.3775407/4 = -0.0471926; dL/dπr = +0.5·0.3775407/2 = +0.0943852.
    Rewards are β·(summed) log-ratios, as TRL: 1.0 and -0.5.
    """
    out, gc, gr = loss_and_grads("sigmoid_norm", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.4740770, abs=1e-7)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.0471926, abs=1e-7), pytest.approx(0.0943852, abs=1e-7))
    assert_rewards_are_beta_logratios(out, 0.5)


@covers("sft")
def test_sft_is_the_batch_token_mean_nll_of_chosen():
    """One pair: L = -log πθ(yc)/|yc| = 10/4 = 2.5; dL/dπc = -1/4; the rejected answer gets no gradient.
    Rewards stay β·log-ratios: 0.5·2 = 1, 0.5·(-1) = -0.5.
    Two pairs, chosen log-probs (-10, -3) over (4, 2) tokens: L = 13/6 = 2.1666667 for the batch
    (the mean of the pairs' 2.5 and 1.5 would be 2.0), repeated per pair; d(mean L)/dπc = -1/6 each.
    Under LD-DPO the plain sums (`sft_chosen_logps`) count, not the weighted ones."""
    out, gc, gr = loss_and_grads("sft", DPOParams(beta=0.5))
    assert out.losses.item() == pytest.approx(2.5)
    assert (gc.item(), gr.item()) == (pytest.approx(-0.25), 0.0)
    assert_rewards_are_beta_logratios(out, 0.5)
    pc = t(-10.0, -3.0).requires_grad_()
    x = DPOInputs(pc, t(-1.0, -1.0), t(0.0, 0.0), t(0.0, 0.0), t(4.0, 2.0), t(1.0, 1.0))
    out = DPO_LOSSES["sft"](x, DPOParams())
    assert torch.allclose(out.losses, t(13 / 6, 13 / 6))
    out.losses.mean().backward()
    assert torch.allclose(pc.grad, t(-1 / 6, -1 / 6))
    weighted = DPOInputs(t(-5.0, -1.0), t(-1.0, -1.0), t(0.0, 0.0), t(0.0, 0.0), t(4.0, 2.0), t(1.0, 1.0),
                         sft_chosen_logps=t(-10.0, -3.0))
    assert torch.allclose(DPO_LOSSES["sft"](weighted, DPOParams()).losses, t(13 / 6, 13 / 6))


# ----------------------------------------------------------------- f-divergences


def test_f_divergence_scores_hand_derived():
    """Shared pair, rc = 2, rr = -1; TRL 1.16's f'(u) with log u = r, per completion:
    reverse_kl:          r                                    -> (2, -1), margin 3
    forward_kl:          1 - e^-r: 1 - e^-2 = 0.8646647, 1 - e = -1.7182818; margin 2.5829465
    js_divergence:       log 2 + log σ(r): margin log σ(2) - log σ(-1) = -0.1269280 + 1.3132617 = 1.1863337
    alpha_divergence (e^{(α-1)r} - 1)/(α-1):
      α = ½: (e^-1 - 1)/(-½) = 1.2642411, (e^½ - 1)/(-½) = -1.2974425; margin 2.5616837
      α = 2: e^2 - 1 = 6.3890561, e^-1 - 1 = -0.6321206; margin 7.0211767
      α = 1.5: (e - 1)/½ = 3.4365637, (e^-½ - 1)/½ = -0.7869387; margin 4.2235023
      α = 1: the limit, reverse_kl: margin 3.
    """
    x = shared_pair()[0]

    def scores(kind, alpha=0.5):
        return [v.item() for v in f_divergence_scores(x, DPOParams(f_divergence_type=kind, f_alpha_divergence_coef=alpha))]

    assert scores("reverse_kl") == [2.0, -1.0]
    assert scores("forward_kl") == [pytest.approx(0.8646647, abs=1e-7), pytest.approx(-1.7182818, abs=1e-7)]
    assert scores("alpha_divergence", 0.5) == [pytest.approx(1.2642411, abs=1e-7), pytest.approx(-1.2974425, abs=1e-7)]
    assert scores("alpha_divergence", 2.0) == [pytest.approx(6.3890561, abs=1e-7), pytest.approx(-0.6321206, abs=1e-7)]
    assert scores("alpha_divergence", 1.5) == [pytest.approx(3.4365637, abs=1e-7), pytest.approx(-0.7869387, abs=1e-7)]
    assert scores("alpha_divergence", 1.0) == [2.0, -1.0]
    expected = {"reverse_kl": 3.0, "forward_kl": 2.5829465, "js_divergence": 1.1863337}
    for kind, value in expected.items():
        assert f_divergence_logits(x, DPOParams(f_divergence_type=kind)).item() == pytest.approx(value, abs=1e-7)
    for alpha, value in ((0.5, 2.5616837), (2.0, 7.0211767), (1.5, 4.2235023), (1.0, 3.0)):
        p = DPOParams(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=alpha)
        assert f_divergence_logits(x, p).item() == pytest.approx(value, abs=1e-7), alpha
    assert DPOParams().f_alpha_divergence_coef == 0.5  # TRL 1.16's default
    assert set(F_DIVERGENCES) == {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"}


def test_f_divergences_are_zero_at_reference_and_increase_with_the_chosen():
    """r = 0: every f'(1) difference is 0. Each f' is increasing, so d/dπc > 0 and d/dπr < 0."""
    for kind in F_DIVERGENCES:
        p = DPOParams(f_divergence_type=kind, f_alpha_divergence_coef=0.5)
        assert f_divergence_logits(dpo_inputs(-3.0, -7.0, -3.0, -7.0), p).item() == pytest.approx(0.0, abs=1e-12)
        x, pc, pr = shared_pair(requires_grad=True)
        f_divergence_logits(x, p).sum().backward()
        assert pc.grad.item() > 0 > pr.grad.item()


def test_losses_honouring_f_divergence_use_its_margin():
    """forward_kl margin 2.5829465 (see above), β = 0.5 (β·m = 1.2914733) or 0.2, ε = 0.1 where needed:
    z = 1.2914733: σ(z) = 0.7843965, σ(-z) = 0.2156035,
                   log σ(z) = -0.2428407, log σ(-z) = -z + log σ(z) = -1.5343140
    sigmoid:  -log σ(z) = log(1 + e^-1.2914733) = log(1.2748655) = 0.2428407
    hinge:    β = 0.2: 1 - 0.2·2.5829465 = 0.4834107
    robust:   (-0.9·log σ(z) + 0.1·log σ(-z))/0.8 = (0.2185566 - 0.1534314)/0.8 = 0.0651252/0.8 = 0.0814065
    exo_pair: σ(z)(log σ(z) - log 0.9) + σ(-z)(log σ(-z) - log 0.1)
              = 0.7843965·(-0.2428407 + 0.1053605) + 0.2156035·(-1.5343140 + 2.3025851)
              = -0.1078390 + 0.1656420 = 0.0578030
    js_divergence, sigmoid, β = 0.5:
              -log σ(0.5·1.1863337) = log(1 + e^-0.5931668) = log(1.5525746) = 0.4399146
    alpha_divergence α=½, sigmoid, β = 0.5:
              -log σ(0.5·2.5616837) = log(1 + e^-1.2808418) = log(1.2778033) = 0.2451425
    The length-normalised losses divide each score by its length (|yc| = 4, |yr| = 2):
    forward_kl h = 0.8646647/4 + 1.7182818/2 = 0.2161662 + 0.8591409 = 1.0753071
    ipo, β = 1:             (1.0753071 - 0.5)² = 0.5753071² = 0.3309783
    sigmoid_norm, β = 0.5:  log(1 + e^-0.5376535) = 0.4600273
    discopop, β = 0.5:      l = 1.2914733, m = σ(l/0.05) = 1 - 6e-12: L ≈ e^-l = 0.2748655
    """
    x = shared_pair()[0]
    fkl = dict(f_divergence_type="forward_kl")
    cases = [
        ("sigmoid", DPOParams(beta=0.5, **fkl), 0.2428407),
        ("hinge", DPOParams(beta=0.2, **fkl), 0.4834107),
        ("robust", DPOParams(beta=0.5, label_smoothing=0.1, **fkl), 0.0814065),
        ("exo_pair", DPOParams(beta=0.5, label_smoothing=0.1, **fkl), 0.0578030),
        ("sigmoid", DPOParams(beta=0.5, f_divergence_type="js_divergence"), 0.4399146),
        ("sigmoid", DPOParams(beta=0.5, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5), 0.2451425),
        ("ipo", DPOParams(beta=1.0, **fkl), 0.3309783),
        ("sigmoid_norm", DPOParams(beta=0.5, **fkl), 0.4600273),
        ("discopop", DPOParams(beta=0.5, **fkl), 0.2748655),
    ]
    for name, params, value in cases:
        out = DPO_LOSSES[name](x, params)
        assert out.losses.item() == pytest.approx(value, abs=1e-7), (name, params)
        assert_rewards_are_beta_logratios(out, params.beta)
    assert F_DIVERGENCE_LOSSES == {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


def test_other_losses_ignore_f_divergence_type():
    x = shared_pair()[0]
    for name in set(DPO_LOSSES) - F_DIVERGENCE_LOSSES:
        plain = DPO_LOSSES[name](x, DPOParams(beta=0.5, label_smoothing=0.1))
        fkl = DPO_LOSSES[name](x, DPOParams(beta=0.5, label_smoothing=0.1, f_divergence_type="forward_kl"))
        assert torch.equal(plain.losses, fkl.losses), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind,alpha", [("forward_kl", 1.0), ("alpha_divergence", 0.5), ("alpha_divergence", 2.0)])
def test_f_divergence_exponentials_are_capped(dtype, kind, alpha):
    """rr = -10⁴ would give e^{10⁴} or e^{½·10⁴} = inf in any dtype; capped at log(max) - 10 + min(0, log|α-1|)
    the margin, the losses and the gradients stay finite (float32 cap ≈ 78.7, float64 ≈ 699.8).
    ipo is left out: it squares the score (~e^78.7 in float32), which overflows float32 after any cap
    that keeps the score itself; TRL's ipo overflows there too."""
    pr = torch.tensor([-1e4, -50.0], dtype=dtype, requires_grad=True)
    zeros, ones = torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype)
    x = DPOInputs(torch.tensor([-1.0, -1.0], dtype=dtype), pr, zeros, zeros, ones, ones)
    p = DPOParams(beta=5.0, label_smoothing=0.1, f_divergence_type=kind, f_alpha_divergence_coef=alpha)
    assert torch.isfinite(f_divergence_logits(x, p)).all()
    total = sum(DPO_LOSSES[name](x, p).losses.sum() for name in sorted(F_DIVERGENCE_LOSSES - {"ipo"}))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pr.grad).all()


def test_dpo_params_reject_unknown_divergence():
    with pytest.raises(ValueError, match="f_divergence_type"):
        DPOParams(f_divergence_type="kl")
    with pytest.raises(ValueError, match="f_alpha_divergence_coef"):
        DPOParams(f_alpha_divergence_coef=0.0)


# ---------------------------------------------------------------------- combine


def test_combine_weights_the_per_pair_losses():
    """loss_type=[ipo, sigmoid], loss_weights=[0.5, 2] on the shared pair, β = 1:
    ipo = 0.25 (test above), sigmoid = -log σ(3) = log(1 + e^-3) = 0.0485874
    L = 0.5·0.25 + 2·0.0485874 = 0.125 + 0.0971748 = 0.2221748
    Rewards: β·rc = 2 and β·rr = -1, the same for every loss (TRL 1.16).
    """
    x = shared_pair()[0]
    p = DPOParams(beta=1.0)
    out = combine([DPO_LOSSES["ipo"](x, p), DPO_LOSSES["sigmoid"](x, p)], [0.5, 2.0])
    assert isinstance(out, DPOLossOutput)
    assert out.losses.item() == pytest.approx(0.2221748, abs=1e-7)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (pytest.approx(2.0), pytest.approx(-1.0))
    with pytest.raises(ValueError, match="one weight per loss"):
        combine([DPO_LOSSES["ipo"](x, p)], [1.0, 1.0])


def test_every_table_entry_has_a_hand_derived_test():
    assert _COVERED == set(DPO_LOSSES)


def test_every_loss_returns_per_pair_shapes_and_detached_rewards():
    x = three_pairs(requires_grad=True)[0]
    for name, fn in DPO_LOSSES.items():
        out = fn(x, DPOParams(beta=0.5, label_smoothing=0.1))
        assert out.losses.shape == (3,) and out.chosen_rewards.shape == (3,) and out.rejected_rewards.shape == (3,)
        assert out.losses.requires_grad and not out.chosen_rewards.requires_grad, name
