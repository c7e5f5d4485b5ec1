"""Objectives on list rows (issue 17): one prompt, K scored answers, all scored in one pass.

`ListObjective` wraps a family's pair objective (DPO, ORPO, CPO) and applies it to the
ordered answer pairs of each prompt (`list_pairs`: all, best_vs_rest, adjacent; ties never
make a pair), or — for DPO's listwise loss types — scores the whole ranking at once
(`plackett_luce`, `lipo`, in `preftune.losses.listwise`).

- Pairwise losses: each ordered pair (i better than j) gets the family's loss as if it were a
  pair row (chosen = i, rejected = j), the pairs' losses are averaged per prompt, then over the
  prompts — so a prompt with many answers weighs as much as a pair row, and a pair row given as
  a list of two trains exactly as the pair.
- ORPO: the best answer's NLL (the batch's token mean over the best answers' tokens, as over the
  chosen rows of pairs) plus β × the odds-ratio term against each worse answer (best_vs_rest by
  default) — our extension of ORPO to lists. CPO: its pairwise term plus cpo_alpha × the best
  answers' NLL.
- The best answer of a prompt is its first answer with the top score; the worst its first with
  the lowest score.

Metrics (per prompt unless said): rewards/chosen and rewards/rejected are the best and worst
answers' rewards (each family's reward: DPO β·log-ratio, ORPO β·mean log p, CPO its β·log p);
rewards/margins their difference; rewards/accuracies the share of ALL ordered pairs (whatever
`list_pairs` trains on) whose better answer has the higher reward (a token-weighted metric: pairs
counted over the logging window); rewards/ranking_accuracy the share of prompts whose answers the
rewards order exactly (every ordered pair right; ties unconstrained).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from preftune.data.collate import ListBatch
from preftune.logps import LogpsRequest, SequenceLogps
from preftune.losses import (CPO_LOSSES, LIST_LOSSES, DPOInputs, combine, ordered_pairs, orpo_loss,
                             pairwise_mean_per_prompt, sft_loss)
from preftune.train.objective_output import ObjectiveOutput
from preftune.train.objectives import CPOObjective, DPOObjective, ORPOObjective

Tensor = torch.Tensor


@dataclass(frozen=True)
class ListLayout:
    """The answers of G prompts in a `ListBatch` of N rows, as dense (G, K) views.

    groups, scores: (N,) — each row's prompt and score; index: (G, K) long — the row of answer k of
    prompt g (0 where prompt g has fewer answers); mask: (G, K) bool — True on real answers.
    """

    groups: Tensor
    scores: Tensor
    index: Tensor
    mask: Tensor

    @classmethod
    def of(cls, batch: ListBatch) -> "ListLayout":
        groups = batch.groups
        n = groups.shape[0]
        g = int(groups[-1]) + 1
        rows = torch.arange(n, device=groups.device)
        first = torch.full((g,), n, dtype=torch.long, device=groups.device).scatter_reduce(0, groups, rows, "amin")
        k = rows - first[groups]  # (N,) the answer's place in its prompt (rows of a prompt are adjacent)
        width = int(k.max()) + 1
        index = torch.zeros(g, width, dtype=torch.long, device=groups.device)
        mask = torch.zeros(g, width, dtype=torch.bool, device=groups.device)
        index[groups, k] = rows
        mask[groups, k] = True
        return cls(groups, batch.scores.to(torch.float32), index, mask)

    @property
    def n_prompts(self) -> int:
        return self.index.shape[0]

    def dense(self, values: Tensor) -> Tensor:
        """(N,) per-row values -> (G, K) (padding answers repeat row 0's value; the mask says which are real)."""
        return values[self.index]

    def pair_rows(self, mode: str) -> tuple[Tensor, Tensor, Tensor]:
        """(prompt, better row, worse row), each (P,), for the ordered pairs `mode` selects."""
        group, better, worse = ordered_pairs(self.dense(self.scores), self.mask, mode)
        return group, self.index[group, better], self.index[group, worse]

    def extreme_rows(self) -> tuple[Tensor, Tensor]:
        """(best row, worst row), each (G,): the first answer with the top / the lowest score."""
        scores = self.dense(self.scores)
        best = torch.where(self.mask, scores, -torch.inf).argmax(1)  # argmax returns the first maximum
        worst = torch.where(self.mask, -scores, -torch.inf).argmax(1)
        rows = torch.arange(self.n_prompts, device=scores.device)
        return self.index[rows, best], self.index[rows, worst]

    def per_prompt_mean(self, values: Tensor, group: Tensor) -> Tensor:
        """(P,) values of pairs of prompts `group` -> (G,) each prompt's mean (0 for a prompt without pairs)."""
        return pairwise_mean_per_prompt(values, group, self.n_prompts)


def _ranking_metrics(layout: ListLayout, rewards: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """((correct ordered pairs, ordered pairs), (G,) 1.0 where every ordered pair of the prompt is right)."""
    group, better, worse = layout.pair_rows("all")
    right = (rewards[better] > rewards[worse]).float()
    wrong = right.new_zeros(layout.n_prompts).index_add(0, group, 1 - right)
    return (right.sum(), right.new_tensor(float(right.numel()))), (wrong == 0).float()


@dataclass(frozen=True)
class ListObjective:
    """A family's objective on list rows (see the module docstring). `layout` is bound per batch
    (`for_batch`); the trainer calls the bound copy."""

    pairwise: DPOObjective | ORPOObjective | CPOObjective
    list_pairs: str = "all"
    listwise: str | None = None  # DPO's plackett_luce or lipo: the whole ranking instead of pairs
    layout: ListLayout | None = None

    @classmethod
    def from_config(cls, pairwise, args) -> "ListObjective":
        default = "best_vs_rest" if isinstance(pairwise, ORPOObjective) else "all"
        return cls(pairwise, args.list_pairs or default, getattr(args, "listwise_loss", None))

    @property
    def needs_reference(self) -> bool:
        return self.pairwise.needs_reference

    @property
    def use_weighting(self) -> bool:
        return self.pairwise.use_weighting

    def for_batch(self, batch) -> "ListObjective":
        if not isinstance(batch, ListBatch):
            raise ValueError(f"list rows were expected, got a {type(batch).__name__}; collate with ListCollator.")
        return dataclasses.replace(self, layout=ListLayout.of(batch))

    def _best_rows_mask(self, n: int, device) -> Tensor:
        best, _ = self.layout.extreme_rows()
        return torch.zeros(n, dtype=torch.bool, device=device).index_fill(0, best, True)

    def logps_request(self, completion_mask: Tensor) -> LogpsRequest:
        """ORPO's NLL rows are the best answers' (whole sequences, unless nll_completion_only); WPO; token metrics."""
        rows = None
        if isinstance(self.pairwise, ORPOObjective) and not self.pairwise.nll_completion_only:
            rows = self._best_rows_mask(completion_mask.shape[0], completion_mask.device)
        return LogpsRequest(sequence_rows=rows, wpo=self.use_weighting, token_metrics=True)

    def reference_request(self, completion_mask: Tensor) -> LogpsRequest:
        return LogpsRequest()

    def nll_token_count(self, batch) -> Tensor | None:
        """The tokens the best answers' NLL averages over in one list batch (ORPO, CPO); None for DPO."""
        if isinstance(self.pairwise, DPOObjective):
            return None
        completion_only = isinstance(self.pairwise, CPOObjective) or self.pairwise.nll_completion_only
        mask = batch.completion_mask if completion_only else batch.attention_mask
        best, _ = self.for_batch(batch).layout.extreme_rows()
        return mask[best, 1:].sum()

    # ------------------------------------------------------------------ loss

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None = None, nll_tokens=None) -> ObjectiveOutput:
        layout = self.layout
        if layout is None:
            raise RuntimeError("ListObjective is called through for_batch(batch)")
        if isinstance(self.pairwise, DPOObjective):
            loss, rewards, logps, metrics = self._dpo(policy, ref)
            nll = None
        elif isinstance(self.pairwise, ORPOObjective):
            loss, rewards, logps, metrics, nll = self._orpo(policy, nll_tokens)
        else:
            loss, rewards, logps, metrics, nll = self._cpo(policy, nll_tokens)
        best, worst = layout.extreme_rows()
        accuracy, ranked = _ranking_metrics(layout, rewards)
        metrics.update({
            "rewards/chosen": rewards[best], "rewards/rejected": rewards[worst],
            "rewards/margins": rewards[best] - rewards[worst], "rewards/ranking_accuracy": ranked,
            "logps/chosen": logps[best], "logps/rejected": logps[worst],
        })
        token_metrics = {**_list_token_metrics(policy, best, worst), "rewards/accuracies": accuracy}
        if nll is not None:
            token_metrics["nll_loss"] = nll
        return ObjectiveOutput(loss, {k: v.detach() for k, v in metrics.items()},
                               {k: (n.detach(), d.detach()) for k, (n, d) in token_metrics.items()})

    def _dpo(self, policy: SequenceLogps, ref: SequenceLogps | None):
        obj, layout = self.pairwise, self.layout
        logps = policy.preference_logps
        ref_logps = torch.zeros_like(logps) if ref is None else ref.preference_logps.detach()
        rewards = (obj.params.beta * (logps - ref_logps)).detach()
        if self.listwise is not None:
            r = obj.params.beta * (layout.dense(logps) - layout.dense(ref_logps))  # (G, K)
            losses = LIST_LOSSES[self.listwise](r, layout.dense(layout.scores), layout.mask)  # (G,)
            return losses.mean(), rewards, logps, {}
        group, i, j = layout.pair_rows(self.list_pairs)
        tokens = policy.completion_tokens
        x = DPOInputs(logps[i], logps[j], ref_logps[i], ref_logps[j], tokens[i], tokens[j],
                      sft_chosen_logps=policy.completion_logps[i])
        fns, weights = list(obj.loss_fns), list(obj.loss_weights)
        if obj.rpo_alpha is not None:
            fns, weights = fns + [sft_loss], weights + [obj.rpo_alpha]
        losses = combine([fn(x, obj.params) for fn in fns], weights).losses  # (P,)
        metrics = {}
        if obj.use_weighting:  # WPO: each pair weighted by both answers' on-policy probability
            pair_weights = torch.exp(policy.completion_wpo_avg[i] + policy.completion_wpo_avg[j])
            losses = losses * pair_weights
            metrics["wpo_weights"] = layout.per_prompt_mean(pair_weights, group)
        return layout.per_prompt_mean(losses, group).mean(), rewards, logps, metrics

    def _nll(self, policy: SequenceLogps, completion_only: bool, nll_tokens) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The best answers' NLL: one token mean over their tokens (over the accumulation window when counted)."""
        best, _ = self.layout.extreme_rows()
        if completion_only:
            logps, tokens = policy.completion_logps[best], policy.completion_tokens[best]
        else:
            logps, tokens = policy.sequence_logps[best], policy.sequence_tokens[best]
        nll_sum, count = -logps.sum(), tokens.sum()
        return nll_sum / (count.clamp(min=1) if nll_tokens is None else nll_tokens), (nll_sum, count)

    def _orpo(self, policy: SequenceLogps, nll_tokens):
        obj, layout = self.pairwise, self.layout
        avg = policy.completion_avg_logps
        group, i, j = layout.pair_rows(self.list_pairs)
        nll, logged = self._nll(policy, obj.nll_completion_only, nll_tokens)
        out = orpo_loss(avg[i], avg[j], torch.zeros_like(avg[i]), obj.beta)  # the odds-ratio terms, per pair
        loss = nll + layout.per_prompt_mean(out.losses, group).mean()
        metrics = {"log_odds_chosen": layout.per_prompt_mean(out.log_odds, group),
                   "log_odds_ratio": layout.per_prompt_mean(out.log_sigmoid_log_odds, group)}
        return loss, (obj.beta * avg).detach(), avg, metrics, logged

    def _cpo(self, policy: SequenceLogps, nll_tokens):
        obj, layout = self.pairwise, self.layout
        logps, lengths = policy.completion_logps, policy.completion_tokens.clamp(min=1)
        fn = CPO_LOSSES[obj.loss_type]
        group, i, j = layout.pair_rows(self.list_pairs)
        loss = layout.per_prompt_mean(fn(logps[i], logps[j], lengths[i], lengths[j], obj.params).losses, group).mean()
        nll, logged = self._nll(policy, True, nll_tokens)
        if obj.cpo_alpha != 0:
            loss = loss + obj.cpo_alpha * nll
        else:  # logged as 0 when the term is off, as the pair objective
            logged = (torch.zeros_like(logged[0]), logged[1])
        each = fn(logps, logps, lengths, lengths, obj.params)  # every row against itself: its reward and log-prob
        return loss, each.chosen_rewards.detach(), each.chosen_logps, {}, logged


def _list_token_metrics(policy: SequenceLogps, best: Tensor, worst: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """TRL's token-weighted metrics on lists: logits/chosen over the best answers' tokens, logits/rejected over the
    worst's, entropy over every answer's, mean_token_accuracy over the best answers'."""
    tokens = policy.completion_tokens
    out = {"logits/chosen": (policy.completion_logits_sum[best].sum(), tokens[best].sum()),
           "logits/rejected": (policy.completion_logits_sum[worst].sum(), tokens[worst].sum())}
    if policy.completion_entropy_sum is not None:
        out["entropy"] = (policy.completion_entropy_sum.sum(), tokens.sum())
    if policy.completion_top1 is not None:
        out["mean_token_accuracy"] = (policy.completion_top1[best].sum(), tokens[best].sum())
    return out
