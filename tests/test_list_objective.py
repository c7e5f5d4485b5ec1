"""The list objective (issue 17) on hand-made log-probs: which pairs, per-prompt means, metrics."""
import math

import pytest
import torch

from preftune.data.collate import ListBatch, ListCollator
from preftune.logps import SequenceLogps
from preftune.losses import DPOParams, sigmoid_loss
from preftune.train.list_objective import ListLayout, ListObjective
from preftune.train.objectives import DPOObjective, ORPOObjective


def ls(x):  # log σ(x)
    return -math.log1p(math.exp(-x))


def batch(*lists):
    """lists: the scores of each prompt's answers; every answer one token long."""
    features = [dict(prompt_ids=[5], completion_ids=[[6]] * len(s), scores=list(s)) for s in lists]
    return ListBatch.from_inputs(ListCollator(0)(features))


def logps(values, tokens=1.0):
    v = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    z = torch.zeros_like(v).detach()
    return SequenceLogps(v, torch.full_like(z, tokens), v, torch.full_like(z, tokens), z), v


def dpo(**kw):
    return DPOObjective(loss_fns=(sigmoid_loss,), loss_weights=(1.0,), params=DPOParams(beta=1.0), **kw)


def test_layout_dense_views():
    """Scores [2, 1, 0] and [0, 1]: rows 0-2 and 3-4; best rows 0 and 4, worst rows 2 and 3."""
    layout = ListLayout.of(batch([2.0, 1.0, 0.0], [0.0, 1.0]))
    assert layout.index.tolist() == [[0, 1, 2], [3, 4, 0]]
    assert layout.mask.tolist() == [[True, True, True], [True, True, False]]
    best, worst = layout.extreme_rows()
    assert best.tolist() == [0, 4] and worst.tolist() == [2, 3]


@pytest.mark.parametrize("mode, want", [
    # prompt 0: logps −1, −2, −4 (scores 2, 1, 0); prompt 1: −1, −3 (scores 0, 1: the second answer is better)
    # all: (0,1) −logσ(1), (0,2) −logσ(3), (1,2) −logσ(2) → mean 0.16293; prompt 1: −logσ(−2) = 2.12693
    ("all", ((-ls(1) - ls(3) - ls(2)) / 3 - ls(-2)) / 2),
    # best_vs_rest: (0,1), (0,2) → (0.31326 + 0.04859)/2
    ("best_vs_rest", ((-ls(1) - ls(3)) / 2 - ls(-2)) / 2),
    # adjacent: (0,1), (1,2) → (0.31326 + 0.12693)/2
    ("adjacent", ((-ls(1) - ls(2)) / 2 - ls(-2)) / 2),
])
def test_pairwise_dpo_means_per_prompt_then_over_prompts(mode, want):
    b = batch([2.0, 1.0, 0.0], [0.0, 1.0])
    policy, v = logps([-1.0, -2.0, -4.0, -1.0, -3.0])
    out = ListObjective(dpo(), list_pairs=mode).for_batch(b)(policy, None)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    # rewards: β·(log p − 0); best/worst per prompt; every ordered pair of prompt 0 right, prompt 1's wrong
    assert out.metrics["rewards/chosen"].tolist() == [-1.0, -3.0]
    assert out.metrics["rewards/rejected"].tolist() == [-4.0, -1.0]
    assert out.metrics["rewards/ranking_accuracy"].tolist() == [1.0, 0.0]
    right, pairs = out.token_metrics["rewards/accuracies"]
    assert (right.item(), pairs.item()) == (3.0, 4.0)  # over ALL ordered pairs, whatever list_pairs trains on
    out.loss.backward()
    assert v.grad[4] < 0 < v.grad[3]  # prompt 1: descent pushes the better (second) answer up, the worse down


def test_ties_make_no_pair_and_do_not_count_against_the_ranking():
    """Scores [1, 1, 0]: pairs (0,2), (1,2) only; logps −1, −5, −2: pair (1,2) wrong → ranking 0, accuracy 1/2."""
    b = batch([1.0, 1.0, 0.0])
    policy, _ = logps([-1.0, -5.0, -2.0])
    out = ListObjective(dpo()).for_batch(b)(policy, None)
    assert out.loss.item() == pytest.approx((-ls(1) - ls(-3)) / 2, rel=1e-5)
    assert out.metrics["rewards/ranking_accuracy"].tolist() == [0.0]
    assert [t.item() for t in out.token_metrics["rewards/accuracies"]] == [1.0, 2.0]


def test_plackett_luce_of_two_equals_sigmoid():
    b = batch([1.0, 0.0], [0.0, 1.0])
    policy, _ = logps([-1.0, -2.5, -0.5, -0.25])
    listwise = ListObjective(dpo(), listwise="plackett_luce").for_batch(b)(policy, None)
    pairwise = ListObjective(dpo()).for_batch(b)(policy, None)
    assert listwise.loss.item() == pytest.approx(pairwise.loss.item(), rel=1e-6)
    assert listwise.loss.item() == pytest.approx((-ls(1.5) - ls(0.25)) / 2, rel=1e-6)


def test_orpo_nll_is_the_best_answers_token_mean():
    """Two prompts; best rows 1 and 2 with sequence log-probs −6 (3 tokens) and −2 (1 token): NLL = 8/4 = 2.
    β = 0: the loss is the NLL alone."""
    b = batch([0.0, 1.0], [3.0, 2.0, 1.0])
    v = torch.tensor([-1.0, -6.0, -2.0, -4.0, -5.0])
    tokens = torch.tensor([1.0, 3.0, 1.0, 2.0, 2.0])
    z = torch.zeros(5)
    policy = SequenceLogps(v, tokens, v, tokens, z)
    objective = ListObjective.from_config(ORPOObjective(beta=0.0), type("A", (), {"list_pairs": None})())
    assert objective.list_pairs == "best_vs_rest"
    bound = objective.for_batch(b)
    assert bound.logps_request(b.completion_mask).sequence_rows.tolist() == [False, True, True, False, False]
    out = bound(policy, None)
    assert out.loss.item() == pytest.approx(2.0)
    assert [t.item() for t in out.token_metrics["nll_loss"]] == [8.0, 4.0]


def test_needs_binding_to_a_list_batch():
    with pytest.raises(ValueError, match="list rows were expected"):
        ListObjective(dpo()).for_batch(object())
