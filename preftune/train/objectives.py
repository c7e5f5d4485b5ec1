"""Objectives: from the policy's (and reference's) sequence log-probs to a loss and metrics.

An objective is resolved once from the config (`objective_from_config`) and called
every step; it splits the concatenated batch (chosen rows first, then rejected
rows), calls the pure loss function and names the metrics exactly as TRL logs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.logps import LogpsRequest, SequenceLogps
from preftune.train.objective_output import ObjectiveOutput
from preftune.losses import (CPO_LOSSES, DPO_LOSSES, CPOParams, DPOInputs, DPOLossFn, DPOParams, combine, orpo_loss,
                             sft_loss)

Tensor = torch.Tensor


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    b = x.shape[0] // 2
    return x[:b], x[b:]


def _reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
    }


def _token_metrics(policy: SequenceLogps) -> dict[str, tuple[Tensor, Tensor]]:
    """TRL 1.16's token-weighted metrics: numerators and denominators over the batch's completion tokens.

    logits/chosen|rejected: Σ vocabulary-mean logit / number of completion tokens, per half;
    entropy: Σ policy entropy over all completion tokens / their number;
    mean_token_accuracy: chosen completion tokens whose argmax logit is the label / their number.
    """
    tokens_c, tokens_r = (t.sum() for t in _halves(policy.completion_tokens))
    logits_c, logits_r = (t.sum() for t in _halves(policy.completion_logits_sum))
    out = {"logits/chosen": (logits_c, tokens_c), "logits/rejected": (logits_r, tokens_r)}
    if policy.completion_entropy_sum is not None:
        out["entropy"] = (policy.completion_entropy_sum.sum(), tokens_c + tokens_r)
    if policy.completion_top1 is not None:
        out["mean_token_accuracy"] = (_halves(policy.completion_top1)[0].sum(), tokens_c)
    return {k: (n.detach(), d.detach()) for k, (n, d) in out.items()}


class _AsksForLogps:
    """What an objective asks of the log-prob path beyond the completion log-probs: its
    `sequence_rows`, `token_weights` and `use_weighting`, in one request."""

    def logps_request(self, completion_mask: Tensor) -> LogpsRequest:
        """completion_mask: (N, T) of the batch (N = 2B rows, chosen first)."""
        return LogpsRequest(sequence_rows=self.sequence_rows(completion_mask.shape[0], completion_mask.device),
                            completion_weights=self.token_weights(completion_mask),
                            wpo=self.use_weighting, token_metrics=True)

    def reference_request(self, completion_mask: Tensor) -> LogpsRequest:
        """What the reference's log-prob path is asked: the same LD-DPO weights (TRL 1.16 weights the
        reference's log-probs too), nothing else."""
        return LogpsRequest(completion_weights=self.token_weights(completion_mask))


@dataclass(frozen=True)
class ORPOObjective(_AsksForLogps):
    beta: float
    nll_completion_only: bool = False
    needs_reference = False
    use_weighting = False

    def token_weights(self, completion_mask: Tensor) -> Tensor | None:
        return None

    def sequence_rows(self, n_rows: int, device) -> Tensor | None:
        """Rows whose whole sequence enters the NLL: the chosen half, unless completion-only."""
        if self.nll_completion_only:
            return None
        return torch.arange(n_rows, device=device) < n_rows // 2

    def nll_token_count(self, batch) -> Tensor:
        """The tokens this objective's NLL averages over in one collated decoder-only batch (2B, T): the
        chosen rows' predicted tokens (`scored_positions`: every real token after the first, or the
        completion tokens with nll_completion_only)."""
        mask = batch.completion_mask if self.nll_completion_only else batch.attention_mask
        return mask[: mask.shape[0] // 2, 1:].sum()

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None = None, nll_tokens=None) -> ObjectiveOutput:
        """nll_tokens: the NLL's denominator when the trainer counted it over a gradient-accumulation window
        (see PreferenceTrainer._get_num_items_in_batch); None: this batch's own token count, as TRL."""
        chosen_avg, rejected_avg = _halves(policy.completion_avg_logps)
        # The NLL is the token mean over the batch's chosen rows (TRL's cross-entropy over every
        # non-padding token of them; completion tokens only with nll_completion_only).
        if self.nll_completion_only:
            logps, tokens = _halves(policy.completion_logps)[0], _halves(policy.completion_tokens)[0]
        else:
            logps, tokens = _halves(policy.sequence_logps)[0], _halves(policy.sequence_tokens)[0]
        nll_sum, batch_tokens = -logps.sum(), tokens.sum()
        nll = nll_sum / (batch_tokens.clamp(min=1) if nll_tokens is None else nll_tokens)
        out = orpo_loss(chosen_avg, rejected_avg, nll, self.beta)
        metrics = {
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards),
            "log_odds_chosen": out.log_odds,
            "log_odds_ratio": out.log_sigmoid_log_odds,
            "logps/chosen": chosen_avg,
            "logps/rejected": rejected_avg,
        }
        token_metrics = {**_token_metrics(policy), "nll_loss": (nll_sum.detach(), batch_tokens.detach())}
        return ObjectiveOutput(out.losses.mean(), {k: v.detach() for k, v in metrics.items()}, token_metrics)


@dataclass(frozen=True)
class CPOObjective(_AsksForLogps):
    """The CPO family (TRL 1.16's CPOTrainer): a reference-free preference term on the completion
    log-probs (summed or length-averaged by loss_type, see `preftune.losses.cpo`) plus cpo_alpha × the
    NLL of the chosen completions, one token mean over their completion tokens (TRL's cross-entropy
    over the chosen rows' labels, which are -100 on the prompt)."""

    loss_type: str
    params: CPOParams
    cpo_alpha: float = 1.0
    needs_reference = False
    use_weighting = False

    def token_weights(self, completion_mask: Tensor) -> Tensor | None:
        return None

    def sequence_rows(self, n_rows: int, device) -> Tensor | None:
        return None  # the NLL is over completion tokens only

    def nll_token_count(self, batch) -> Tensor:
        """The chosen rows' completion tokens of one decoder-only batch (2B, T): the NLL's denominator."""
        return batch.completion_mask[: batch.completion_mask.shape[0] // 2, 1:].sum()

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None = None, nll_tokens=None) -> ObjectiveOutput:
        """nll_tokens: the NLL's denominator over a gradient-accumulation window (as ORPO's); None: this batch's."""
        (pc, pr), (lc, lr) = _halves(policy.completion_logps), _halves(policy.completion_tokens)
        out = CPO_LOSSES[self.loss_type](pc, pr, lc.clamp(min=1), lr.clamp(min=1), self.params)
        loss = out.losses.mean()
        nll_sum, tokens = -pc.sum(), lc.sum()
        if self.cpo_alpha != 0:
            loss = loss + self.cpo_alpha * nll_sum / (tokens.clamp(min=1) if nll_tokens is None else nll_tokens)
        else:  # TRL logs nll_loss = 0 when the term is off
            nll_sum = torch.zeros_like(nll_sum)
        metrics = {
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards),
            "logps/chosen": out.chosen_logps,
            "logps/rejected": out.rejected_logps,
        }
        token_metrics = {**_token_metrics(policy), "nll_loss": (nll_sum.detach(), tokens.detach())}
        return ObjectiveOutput(loss, {k: v.detach() for k, v in metrics.items()}, token_metrics)


def ld_token_weights(completion_mask: Tensor, alpha: float) -> Tensor:
    """LD-DPO (Liu et al. 2024, arXiv 2409.06411): weight 1 on the first l_p completion tokens,
    alpha on the rest, with l_p the shorter completion's length in the pair. (N, T) -> (N, T).
    Applied to the policy's and the reference's log-probs, as TRL 1.16 does."""
    position = completion_mask.cumsum(dim=1)  # 1-based index inside the completion
    lengths = completion_mask.sum(dim=1)
    chosen, rejected = _halves(lengths)
    public = torch.minimum(chosen, rejected).repeat(2)  # (N,)
    ones = torch.ones_like(completion_mask, dtype=torch.float32)
    return torch.where(position <= public[:, None], ones, ones * alpha)


@dataclass(frozen=True)
class DPOObjective(_AsksForLogps):
    """The DPO family: weighted loss_type terms (rpo_alpha adds `sft`), then WPO's weights."""

    loss_fns: tuple[DPOLossFn, ...]
    loss_weights: tuple[float, ...]
    params: DPOParams
    reference_free: bool = False
    rpo_alpha: float | None = None
    use_weighting: bool = False
    ld_alpha: float | None = None

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def sequence_rows(self, n_rows: int, device) -> Tensor | None:
        return None

    def token_weights(self, completion_mask: Tensor) -> Tensor | None:
        return None if self.ld_alpha is None else ld_token_weights(completion_mask, self.ld_alpha)

    def __call__(self, policy: SequenceLogps, ref: SequenceLogps | None, nll_tokens=None) -> ObjectiveOutput:
        """nll_tokens is ORPO's (the window's NLL denominator); DPO's `sft` keeps the batch token mean, as TRL."""
        pc, pr = _halves(policy.preference_logps)
        if ref is None:  # reference-free: an implicit uniform reference
            rc, rr = torch.zeros_like(pc), torch.zeros_like(pr)
        else:
            rc, rr = _halves(ref.preference_logps.detach())
        lc, lr = _halves(policy.completion_tokens)
        x = DPOInputs(pc, pr, rc, rr, lc, lr, sft_chosen_logps=_halves(policy.completion_logps)[0])
        fns, weights = list(self.loss_fns), list(self.loss_weights)
        if self.rpo_alpha is not None:  # RPO (Pang et al. 2024, arXiv 2404.19733), older TRL: + α·sft
            fns, weights = fns + [sft_loss], weights + [self.rpo_alpha]
        out = combine([fn(x, self.params) for fn in fns], weights)
        losses = out.losses
        metrics = {
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards),
            "logps/chosen": pc,
            "logps/rejected": pr,
        }
        token_metrics = _token_metrics(policy)
        if self.use_weighting:  # WPO (Zhou et al. 2024, arXiv 2406.11827, eq. 2), weights not differentiated
            wc, wr = _halves(policy.completion_wpo_avg)
            weights = torch.exp(wc + wr)  # no clamp, as TRL 1.16
            losses = losses * weights
            metrics["wpo_weights"] = weights
        if self.rpo_alpha is not None:
            token_metrics["nll_loss"] = (-x.sft_chosen_logps.sum().detach(), lc.sum().detach())
        return ObjectiveOutput(losses.mean(), {k: v.detach() for k, v in metrics.items()}, token_metrics)


def objective_from_config(args):
    """Resolve the config's flags once into the objective the trainer calls each step."""
    from preftune.train.config import ORPOConfig
    from preftune.train.dpo_config import DPOConfig
    from preftune.train.kto_config import KTOConfig

    if isinstance(args, KTOConfig):  # its own module: preftune.train.kto_objective
        from preftune.train.kto_objective import KTOObjective

        return KTOObjective.from_config(args)
    if isinstance(args, ORPOConfig):
        return ORPOObjective(beta=args.beta, nll_completion_only=args.nll_completion_only)
    from preftune.train.cpo_config import CPOConfig

    if isinstance(args, CPOConfig):
        params = CPOParams(beta=args.beta, label_smoothing=args.label_smoothing, simpo_gamma=args.simpo_gamma,
                           alpha=args.alpha)
        return CPOObjective(loss_type=args.loss_type, params=params, cpo_alpha=args.cpo_alpha)
    if isinstance(args, DPOConfig):
        params = DPOParams(
            beta=args.beta, label_smoothing=args.label_smoothing, discopop_tau=args.discopop_tau,
            f_divergence_type=args.f_divergence_type, f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        )
        types = [] if args.listwise_loss else args.loss_types  # a listwise loss: see list_objective
        weights = tuple(args.loss_weights) if args.loss_weights is not None else (1.0,) * len(types)
        return DPOObjective(
            loss_fns=tuple(DPO_LOSSES[t] for t in types), loss_weights=weights, params=params,
            reference_free=args.reference_free, rpo_alpha=args.rpo_alpha, use_weighting=args.use_weighting,
            ld_alpha=args.ld_alpha,
        )
    raise TypeError(f"no objective for {type(args).__name__}")
