"""Losses on lists: one prompt, K scored answers. Pure functions of padded (G, K) tensors.

G prompts, K = the most answers any prompt has. Every function takes
  scores (G, K) float   the data's scores ψ, higher is better; equal scores are ties
  mask   (G, K) bool    True on real answers; padding answers may hold anything (even NaN)
and, for the losses, rewards (G, K): the implicit reward β·(log πθ(y|x) - log πref(y|x)) of
each answer, computed by the caller. Padding never changes a value or a gradient: padded
entries are replaced before any arithmetic, so their gradient is exactly 0.

  ordered_pair_mask / ordered_pairs   which (better, worse) pairs a prompt gives: LIST_PAIR_MODES
  pairwise_mean_per_prompt            mean of per-pair values over each prompt's pairs
  plackett_luce_loss                  the Plackett–Luce form of DPO
  lipo_loss                           LiPO-λ
  LIST_LOSSES                         loss_type -> listwise loss

Ties never make a pair and never impose an order (see each loss for what that means there).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Which ordered pairs a list gives (`list_pairs`), in the order users see them.
LIST_PAIR_MODES: tuple[str, ...] = ("all", "best_vs_rest", "adjacent")


def _real(values: Tensor, mask: Tensor) -> Tensor:
    """`values` with padding set to 0, so nothing of a padded entry (NaN, inf) reaches a result or gradient."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _strictly_below(scores: Tensor, mask: Tensor) -> Tensor:
    """(G, K, K) bool: [g, i, j] is True when answers i and j of prompt g are real and ψ_i > ψ_j."""
    s = _real(scores, mask)
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return both & (s.unsqueeze(-1) > s.unsqueeze(-2))


def ordered_pair_mask(scores: Tensor, mask: Tensor, mode: str = "all") -> Tensor:
    """(G, K, K) bool: [g, i, j] is True when (answer i better than answer j) is a pair of prompt g.

      all           every strictly ordered pair: ψ_i > ψ_j
      best_vs_rest  ψ_i = the prompt's top score and ψ_i > ψ_j
      adjacent      ψ_j = the next lower distinct score below ψ_i (the highest score strictly below it)
    Ties (ψ_i = ψ_j) never make a pair, so a prompt whose answers are all tied has none.
    For K distinct scores: all gives K(K-1)/2 pairs, best_vs_rest and adjacent K-1.
    """
    if mode not in LIST_PAIR_MODES:
        raise ValueError(f"list pair mode {mode!r} is not one of {LIST_PAIR_MODES}.")
    below = _strictly_below(scores, mask)
    if mode == "all":
        return below
    s = _real(scores, mask)
    lowest = torch.finfo(s.dtype).min if s.is_floating_point() else torch.iinfo(s.dtype).min
    if mode == "best_vs_rest":
        top = torch.where(mask, s, torch.full_like(s, lowest)).amax(dim=-1, keepdim=True)  # (G, 1)
        return below & (s == top).unsqueeze(-1)
    # adjacent: the highest score strictly below ψ_i, then every j at that level
    candidates = torch.where(below, s.unsqueeze(-2).expand_as(below), torch.full_like(below, lowest, dtype=s.dtype))
    next_level = candidates.amax(dim=-1, keepdim=True)  # (G, K, 1)
    return below & (s.unsqueeze(-2) == next_level)


def ordered_pairs(scores: Tensor, mask: Tensor, mode: str = "all") -> tuple[Tensor, Tensor, Tensor]:
    """The pairs of `ordered_pair_mask` as three (P,) long tensors (group, better, worse): pair p says that
    answer better[p] of prompt group[p] has a strictly higher score than its answer worse[p].
    Ordered by prompt, then better, then worse."""
    group, better, worse = ordered_pair_mask(scores, mask, mode).nonzero(as_tuple=True)
    return group, better, worse


def pairwise_mean_per_prompt(values: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """(G,) the mean of per-pair `values` (P,) over each prompt's pairs (`group` (P,) = the prompt of each
    pair); 0 for a prompt without pairs. Averaging per prompt first gives every prompt the same weight,
    however many pairs it has."""
    total = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add(0, group, values)
    count = torch.bincount(group, minlength=num_groups).to(values.dtype)
    return total / count.clamp(min=1)


def plackett_luce_loss(rewards: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """The Plackett–Luce form of DPO (Rafailov et al. 2023, arXiv 2305.18290, appendix A.3: the
    Plackett–Luce model, eq. 18, with the DPO reward substituted, and its maximum-likelihood objective).
    One loss per prompt, (G,).

    For answers ranked τ(1), ..., τ(K) by score (best first) and rewards r = β·(log πθ - log πref):
        loss = -Σ_k [ r_τ(k) - log Σ_{j≥k} exp r_τ(j) ]
    i.e. -log of the probability that the policy's implicit reward picks the best answer out of all,
    then the second best out of the rest, and so on (the k = K term is 0).

    Ties impose no order: a tied answer is not in the denominator of another answer of its score,
        loss = -Σ_{i: some answer scores below i} [ r_i - log( exp r_i + Σ_{j: ψ_j < ψ_i} exp r_j ) ]
    which is the formula above when no scores tie. For K = 2 it is sigmoid DPO, -log σ(r_1 - r_2).
    A prompt whose answers all tie gets 0. Computed with logsumexp (finite for any finite rewards).
    """
    r = _real(rewards, mask)
    below = _strictly_below(scores, mask)  # [g, i, j]: ψ_i > ψ_j
    itself = torch.eye(r.shape[-1], dtype=torch.bool, device=r.device)
    in_denominator = below | itself
    terms = r.unsqueeze(-2).expand(in_denominator.shape).masked_fill(~in_denominator, float("-inf"))
    log_denominator = torch.logsumexp(terms, dim=-1)  # (G, K), finite: r_i itself is always in it
    log_choice = r - log_denominator
    has_worse = below.any(dim=-1)
    return -torch.where(has_worse, log_choice, torch.zeros_like(log_choice)).sum(dim=-1)


def _rank_by_reward(s: Tensor, mask: Tensor) -> Tensor:
    """(G, K) the 1-based rank of each real answer when its prompt's real answers are sorted by `s`
    descending; ties broken by index (the lower index ranks first). Padding ranks after every real answer."""
    k = s.shape[-1]
    index = torch.arange(k, device=s.device)
    # [g, i, j]: j is a real answer ranked ahead of i
    ahead = (s.unsqueeze(-2) > s.unsqueeze(-1)) | ((s.unsqueeze(-2) == s.unsqueeze(-1)) & (index < index.unsqueeze(-1)))
    ahead = ahead & mask.unsqueeze(-2)
    return 1 + ahead.sum(dim=-1)


def lipo_loss(rewards: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """LiPO-λ (Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank",
    arXiv 2402.01878: the LambdaLoss objective with DPO's reward as the ranking score; equation
    number not checked against the paper).
    One loss per prompt, (G,).

    With s = rewards (the policy's implicit rewards) and ψ = scores (the labels):
        loss = -Σ_{i,j: ψ_i > ψ_j} Δ_ij · log σ(s_i - s_j)
        Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|      (the Lambda weight)
        G_i  = 2^ψ_i - 1                                 (gain)
        D(τ) = log2(1 + τ)                               (discount)
    τ_i is the 1-based rank of answer i when the prompt's answers are sorted by s, highest first
    (ties in s broken by index). Δ is a weight, not differentiated (computed from detached s):
    the gradient is that of the weighted pairwise logistic loss. Tied labels give no pair.
    For K = 2: Δ = |2^ψ_1 - 2^ψ_2|·(1 - 1/log2 3) whichever way s orders the two, a constant
    times sigmoid DPO.

    Normalisation and label scale. LambdaLoss's NDCG form (Wang et al. 2018) also divides the gains
    by the list's ideal DCG; the paper's Δ, as we read it (written above), has no such factor, and
    neither has ours. The loss is the SUM over a prompt's pairs (the paper sums over pairs and
    averages over lists); averaging over prompts is the caller's. Scores are used as given, no
    rescaling: the gain 2^ψ grows exponentially, so the labels' scale sets the loss's scale and how
    much the top answers outweigh the rest (the paper's labels, as we read it, are win rates in
    [0, 1] from a reward-ranking model; a 1–10 rating gives gains up to 1023, and ψ ≥ 128 overflows
    float32). Rescale scores to a small range (e.g. [0, 1], or ranks K-1, ..., 0) rather than
    feeding raw ratings.
    """
    s = _real(rewards, mask)
    psi = _real(scores, mask)
    pairs = _strictly_below(scores, mask)  # [g, i, j]: ψ_i > ψ_j
    with torch.no_grad():
        gain = torch.exp2(psi.to(torch.promote_types(psi.dtype, torch.float32))) - 1
        inverse_discount = 1.0 / torch.log2(1.0 + _rank_by_reward(s.detach(), mask).to(gain.dtype))
        delta = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (
            inverse_discount.unsqueeze(-1) - inverse_discount.unsqueeze(-2)).abs()
        delta = delta.to(s.dtype)
    pair_losses = -delta * F.logsigmoid(s.unsqueeze(-1) - s.unsqueeze(-2))
    return torch.where(pairs, pair_losses, torch.zeros_like(pair_losses)).sum(dim=(-2, -1))


ListLossFn = Callable[[Tensor, Tensor, Tensor], Tensor]

# loss_type -> listwise loss; each takes (rewards, scores, mask), each (G, K), and returns (G,).
LIST_LOSSES: dict[str, ListLossFn] = {
    "plackett_luce": plackett_luce_loss,
    "lipo": lipo_loss,
}
