"""The listwise losses (preftune.losses.listwise) against values derived by hand.

Values used below (σ(z) = 1/(1+e^-z), log σ(z) = -log(1+e^-z)):
  e = 2.7182818  e^-1 = 0.3678794  log(e + 1 + e^-1) = 1.4076060  log(1 + e^-1) = 0.3132617
  log(1 + e^-2) = 0.1269280  -log σ(-0.5) = 0.9740770  -log σ(1.5) = 0.2014133  -log σ(2) = 0.1269280
  -log σ(0.5) = 0.4740770  σ(0.5) = 0.6224593  σ(-1.5) = 0.1824255  σ(-2) = 0.1192029
  1/log2(2) = 1  1/log2(3) = 0.6309298  1/log2(4) = 0.5
"""
import math

import pytest
import torch

from preftune.losses import (LIST_LOSSES, LIST_PAIR_MODES, DPOInputs, DPOParams, lipo_loss, ordered_pair_mask,
                             ordered_pairs, pairwise_mean_per_prompt, plackett_luce_loss, sigmoid_loss)

NAN = float("nan")


def t(*rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def full(g, k):
    return torch.ones(g, k, dtype=torch.bool)


def pairs_of(scores, mask, mode):
    return [tuple(x) for x in torch.stack(ordered_pairs(scores, mask, mode), dim=1).tolist()]


# ------------------------------------------------------------------------------ ordered pairs


def test_ordered_pairs_by_mode():
    """Prompt 0 scores (3, 1, 3, 2, 1): levels 3 {0, 2} > 2 {3} > 1 {1, 4}.
      all:          every strictly ordered pair, 0 and 2 above 1, 3, 4; 3 above 1, 4 -> 8 pairs
      best_vs_rest: the two answers scoring 3 against each worse one -> 6 pairs
      adjacent:     3 -> 2 ((0,3), (2,3)) and 2 -> 1 ((3,1), (3,4)) -> 4 pairs
    Prompt 1 (5, 5, pad, pad, pad): tied, no pair. Prompt 2 (0, 1, pad=9, pad=NaN, pad): one pair (1, 0):
    the padded 9 would beat both if it counted. Order: by prompt, then better, then worse."""
    scores = t([3.0, 1.0, 3.0, 2.0, 1.0], [5.0, 5.0, NAN, 0.0, 0.0], [0.0, 1.0, 9.0, NAN, 7.0])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert pairs_of(scores, mask, "all") == [
        (0, 0, 1), (0, 0, 3), (0, 0, 4), (0, 2, 1), (0, 2, 3), (0, 2, 4), (0, 3, 1), (0, 3, 4), (2, 1, 0)]
    assert pairs_of(scores, mask, "best_vs_rest") == [
        (0, 0, 1), (0, 0, 3), (0, 0, 4), (0, 2, 1), (0, 2, 3), (0, 2, 4), (2, 1, 0)]
    assert pairs_of(scores, mask, "adjacent") == [(0, 0, 3), (0, 2, 3), (0, 3, 1), (0, 3, 4), (2, 1, 0)]
    for mode in LIST_PAIR_MODES:
        group, better, worse = ordered_pairs(scores, mask, mode)
        assert group.dtype == better.dtype == worse.dtype == torch.long
        assert ordered_pair_mask(scores, mask, mode).shape == (3, 5, 5)


def test_ordered_pair_counts_for_distinct_scores():
    """K = 4 distinct scores (in shuffled order 0.5, 2, -1, 1): all gives 4·3/2 = 6 pairs, best_vs_rest 3
    (the best, answer 1, against the others), adjacent 3 (2 > 1 > 0.5 > -1: (1,3), (3,0), (0,2))."""
    scores, mask = t([0.5, 2.0, -1.0, 1.0]), full(1, 4)
    assert len(pairs_of(scores, mask, "all")) == 6
    assert pairs_of(scores, mask, "best_vs_rest") == [(0, 1, 0), (0, 1, 2), (0, 1, 3)]
    assert pairs_of(scores, mask, "adjacent") == [(0, 0, 2), (0, 1, 3), (0, 3, 0)]


def test_all_tied_prompt_has_no_pairs_and_unknown_mode_raises():
    for mode in LIST_PAIR_MODES:
        assert pairs_of(t([1.0, 1.0, 1.0]), full(1, 3), mode) == []
    with pytest.raises(ValueError, match="list pair mode 'every'"):
        ordered_pairs(t([1.0, 0.0]), full(1, 2), "every")


def test_pairwise_mean_per_prompt():
    """values (1, 2, 3, 10) of prompts (0, 0, 0, 2), G = 3: means (1+2+3)/3 = 2, none -> 0, 10.
    Gradient of the sum of means: 1/3 for each of prompt 0's pairs, 1 for prompt 2's."""
    values = t(1.0, 2.0, 3.0, 10.0).requires_grad_()
    out = pairwise_mean_per_prompt(values, torch.tensor([0, 0, 0, 2]), 3)
    assert out.tolist() == pytest.approx([2.0, 0.0, 10.0])
    out.sum().backward()
    assert values.grad.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert pairwise_mean_per_prompt(t(), torch.zeros(0, dtype=torch.long), 2).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------ Plackett–Luce


def test_plackett_luce_hand_derived_k3():
    """Scores (2, 3, 1), rewards (0, 1, -1): ranking by score is answer 1 (r = 1), answer 0 (r = 0), answer 2.
    loss = -[(1 - log(e + 1 + e^-1)) + (0 - log(1 + e^-1)) + 0] = 1.4076060 - 1 + 0.3132617 = 0.7208677.
    Gradients, Z1 = e + 1 + e^-1 = 4.0861613, Z2 = 1 + e^-1 = 1.3678794:
      d/dr(best)   = -1 + e/Z1             = -0.3347590
      d/dr(second) = -1 + 1/Z1 + 1/Z2      = -0.0242130
      d/dr(worst)  = e^-1/Z1 + e^-1/Z2     =  0.3589720   (they sum to 0)"""
    rewards = t([0.0, 1.0, -1.0]).requires_grad_()
    loss = plackett_luce_loss(rewards, t([2.0, 3.0, 1.0]), full(1, 3))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.7208677, abs=1e-7)
    loss.sum().backward()
    assert rewards.grad[0].tolist() == pytest.approx([-0.0242130, -0.3347590, 0.3589720], abs=1e-7)


def test_plackett_luce_without_ties_is_the_papers_product():
    """Without ties the loss is -Σ_k [r_τ(k) - log Σ_{j≥k} exp r_τ(j)], computed here in plain python
    from the ranking by score, for a few lists of K = 4 (in batch, one row each)."""
    rewards = [[0.3, -1.2, 2.0, 0.7], [5.0, -5.0, 0.0, 1.0], [-0.4, -0.4, 0.1, 3.0]]
    scores = [[1.0, 4.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [9.0, 7.5, 8.0, -2.0]]
    expected = []
    for r, s in zip(rewards, scores):
        order = sorted(range(4), key=lambda i: -s[i])
        total = 0.0
        for k in range(4):
            rest = [r[order[j]] for j in range(k, 4)]
            total -= r[order[k]] - math.log(sum(math.exp(x) for x in rest))
        expected.append(total)
    out = plackett_luce_loss(t(*rewards), t(*scores), full(3, 4))
    assert out.tolist() == pytest.approx(expected, abs=1e-10)


def test_plackett_luce_ties_impose_no_order():
    """Scores (2, 2, 1), rewards (1, 0, -1): the tied answers are not in each other's denominator.
    loss = -[(1 - log(e + e^-1)) + (0 - log(1 + e^-1))] = log(1 + e^-2) + log(1 + e^-1)
         = 0.1269280 + 0.3132617 = 0.4401897.
    Swapping the tied answers' rewards gives the same loss (no order among them); all tied: 0."""
    mask = full(1, 3)
    assert plackett_luce_loss(t([1.0, 0.0, -1.0]), t([2.0, 2.0, 1.0]), mask).item() == pytest.approx(0.4401897, abs=1e-7)
    assert plackett_luce_loss(t([0.0, 1.0, -1.0]), t([2.0, 2.0, 1.0]), mask).item() == pytest.approx(0.4401897, abs=1e-7)
    rewards = t([1.0, 0.0, -1.0]).requires_grad_()
    tied = plackett_luce_loss(rewards, t([4.0, 4.0, 4.0]), mask)
    tied.sum().backward()
    assert tied.item() == 0.0 and rewards.grad.abs().sum().item() == 0.0


def test_plackett_luce_for_two_answers_is_sigmoid_dpo():
    """K = 2: -[r1 - log(e^r1 + e^r2)] = log(1 + e^(r2 - r1)) = -log σ(r1 - r2).
    test_losses' shared pair: rc = 2, rr = -1, β = 0.5 -> rewards 1.0, -0.5: -log σ(1.5) = 0.2014133;
    also equal to sigmoid_loss (the DPO implementation) on that pair and on the swapped-score pair."""
    out = plackett_luce_loss(t([1.0, -0.5], [1.0, -0.5]), t([1.0, 0.0], [0.0, 1.0]), full(2, 2))
    assert out[0].item() == pytest.approx(0.2014133, abs=1e-7)
    dpo = sigmoid_loss(DPOInputs(t(-10.0), t(-15.0), t(-12.0), t(-14.0), t(4.0), t(2.0)), DPOParams(beta=0.5))
    assert out[0].item() == pytest.approx(dpo.losses.item(), abs=1e-12)
    assert out[1].item() == pytest.approx(1.7014133, abs=1e-7)  # -log σ(-1.5): the worse answer scored higher


def test_plackett_luce_is_finite_for_large_rewards():
    """float32, scores (3, 2, 1), up to e^-1000 terms:
      rewards (1000, 0, -1000) agree with the ranking: -[(1000 - 1000) + (0 - 0)] = 0;
      rewards (-1000, 1000, 0): -[(-1000 - 1000) + (1000 - 1000)] = 2000;
      rewards (1000, -1000, 0): -[(1000 - 1000) + (-1000 - 0)] = 1000 (2nd and 3rd swapped)."""
    scores = torch.tensor([[3.0, 2.0, 1.0]] * 3)
    rewards = torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0], [1000.0, -1000.0, 0.0]],
                           requires_grad=True)
    out = plackett_luce_loss(rewards, scores, full(3, 3))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(rewards.grad).all()
    assert out[0].item() == pytest.approx(0.0, abs=1e-3)
    assert out[1].item() == pytest.approx(2000.0, rel=1e-6)
    assert out[2].item() == pytest.approx(1000.0, rel=1e-6)


# ------------------------------------------------------------------------------ LiPO-λ


def test_lipo_hand_derived_k3():
    """ψ = (2, 1, 0) -> gains G = 2^ψ - 1 = (3, 1, 0). s = (0.5, 1.0, -1.0): ranked by s, answer 1 is
    first, answer 0 second, answer 2 third -> 1/D = (0.6309298, 1, 0.5).
      (0,1): Δ = |3-1|·|0.6309298 - 1|   = 0.7381405, -log σ(0.5 - 1)  = 0.9740770
      (0,2): Δ = |3-0|·|0.6309298 - 0.5| = 0.3927893, -log σ(0.5 + 1)  = 0.2014133
      (1,2): Δ = |1-0|·|1 - 0.5|         = 0.5,       -log σ(1 + 1)    = 0.1269280
    loss = 0.7190057 + 0.0791130 + 0.0634640 = 0.8615826 (0.86158264 unrounded).
    Gradients with Δ held constant (d/ds_i of -Δ log σ(s_i - s_j) = -Δ·σ(s_j - s_i)):
      ds0 = -0.7381405·σ(0.5) - 0.3927893·σ(-1.5) = -0.5311172
      ds1 = +0.7381405·σ(0.5) - 0.5·σ(-2)         =  0.3998610
      ds2 = +0.3927893·σ(-1.5) + 0.5·σ(-2)        =  0.1312562"""
    s = t([0.5, 1.0, -1.0]).requires_grad_()
    loss = lipo_loss(s, t([2.0, 1.0, 0.0]), full(1, 3))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.8615826, abs=1e-7)
    loss.sum().backward()
    assert s.grad[0].tolist() == pytest.approx([-0.5311172, 0.3998610, 0.1312562], abs=1e-7)


@pytest.mark.parametrize("s, pair_loss", [((0.3, -0.2), 0.4740770), ((-0.2, 0.3), 0.9740770)])
def test_lipo_two_answers_is_weighted_sigmoid_dpo(s, pair_loss):
    """K = 2, ψ = (1, 0): Δ = |2^1 - 2^0|·|1/log2(2) - 1/log2(3)| = 1·(1 - 0.6309298) = 0.3690702,
    the same whether s ranks answer 0 first (s1 > s2: -log σ(0.5) = 0.4740770) or second
    (-log σ(-0.5) = 0.9740770). With ψ = (2, 0): Δ = 3·0.3690702 = 1.1072107.
    Gradient: d/ds1 = -Δ·σ(s2 - s1), Δ not differentiated."""
    delta = 1 - 1 / math.log2(3)
    assert delta == pytest.approx(0.3690702, abs=1e-7)
    x = t(list(s)).requires_grad_()
    loss = lipo_loss(x, t([1.0, 0.0]), full(1, 2))
    assert loss.item() == pytest.approx(delta * pair_loss, abs=1e-7)
    loss.sum().backward()
    sig = 1 / (1 + math.exp(-(s[1] - s[0])))
    assert x.grad[0].tolist() == pytest.approx([-delta * sig, delta * sig], abs=1e-12)
    assert lipo_loss(t(list(s)), t([2.0, 0.0]), full(1, 2)).item() == pytest.approx(3 * delta * pair_loss, abs=1e-7)


def test_lipo_is_finite_for_large_rewards():
    """float32, ψ = (1, 0), Δ = 0.3690702: s = (-1000, 1000) -> Δ·(-log σ(-2000)) = Δ·2000 = 738.1405;
    s = (1000, -1000) -> Δ·log(1 + e^-2000) = 0 in float32. Gradients finite (d/ds1 = -Δ·σ(2000) = -Δ)."""
    s = torch.tensor([[-1000.0, 1000.0], [1000.0, -1000.0]], requires_grad=True)
    out = lipo_loss(s, torch.tensor([[1.0, 0.0]] * 2), full(2, 2))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
    assert out.tolist() == pytest.approx([738.1405, 0.0], abs=1e-3)
    assert s.grad[0].tolist() == pytest.approx([-0.3690702, 0.3690702], abs=1e-6)


def test_lipo_ties():
    """Tied labels make no pair: ψ = (1, 1) gives 0 and no gradient. Tied rewards s = (0, 0) rank by
    index (answer 0 first): ψ = (0, 1) -> Δ = 1·(1 - 0.6309298), loss = Δ·log 2 = 0.2558200."""
    s = t([0.4, -0.1]).requires_grad_()
    tied = lipo_loss(s, t([1.0, 1.0]), full(1, 2))
    tied.sum().backward()
    assert tied.item() == 0.0 and s.grad.abs().sum().item() == 0.0
    assert lipo_loss(t([0.0, 0.0]), t([0.0, 1.0]), full(1, 2)).item() == pytest.approx(0.2558200, abs=1e-7)


# ------------------------------------------------------------------------------ both losses


@pytest.mark.parametrize("name", sorted(LIST_LOSSES))
def test_padding_changes_nothing(name):
    """Prompt 1 has 2 real answers and 2 padded ones holding NaN/huge rewards and scores: its loss and
    the gradients of its real answers equal those of the same prompt alone (K = 2); padded gradients
    are exactly 0. Prompt 0 (4 real answers) likewise equals itself alone."""
    loss_fn = LIST_LOSSES[name]
    rewards = t([0.2, -0.3, 1.1, 0.0], [0.5, -0.5, NAN, 1e30]).requires_grad_()
    scores = t([1.0, 3.0, 2.0, 0.0], [0.0, 2.0, NAN, 50.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    out = loss_fn(rewards, scores, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2:].tolist() == [0.0, 0.0]
    for g, k in ((0, 4), (1, 2)):
        alone_r = rewards.detach()[g:g + 1, :k].clone().requires_grad_()
        alone = loss_fn(alone_r, scores[g:g + 1, :k], full(1, k))
        alone.sum().backward()
        assert out[g].item() == pytest.approx(alone.item(), abs=1e-12)
        assert rewards.grad[g, :k].tolist() == pytest.approx(alone_r.grad[0].tolist(), abs=1e-12)


@pytest.mark.parametrize("name", sorted(LIST_LOSSES))
def test_one_real_answer_gives_zero(name):
    out = LIST_LOSSES[name](t([2.0, 7.0]), t([1.0, 0.0]), torch.tensor([[True, False]]))
    assert out.tolist() == [0.0]


def test_list_losses_table():
    assert LIST_LOSSES == {"plackett_luce": plackett_luce_loss, "lipo": lipo_loss}
