"""The DPO family, one pure function per `loss_type`, and the name → function table.

Notation in the docstrings (all (B,), summed over completion tokens):
  rc = log πθ(yc|x) - log πref(yc|x),  rr = log πθ(yr|x) - log πref(yr|x)   (log-ratios)
  h  = rc - rr = (log πθ(yc) - log πθ(yr)) - (log πref(yc) - log πref(yr))
  β = p.beta, ε = p.label_smoothing, σ = logistic sigmoid, |yc|, |yr| = completion lengths.
The rewards of every loss are β·rc and β·rr, detached, as TRL 1.16 logs them.
Departures from the papers and from TRL are listed in `preftune.losses`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from preftune.losses.dpo import (
    DPOInputs,
    DPOLossFn,
    DPOLossOutput,
    DPOParams,
    f_divergence_logits,
    f_divergence_scores,
    output,
    smoothed_sigmoid,
)

Tensor = torch.Tensor


def _lengths(x: DPOInputs) -> tuple[Tensor, Tensor]:
    # An empty completion counts as one token, as TRL's clamp(min=1): no division by zero.
    return x.chosen_lengths.clamp(min=1), x.rejected_lengths.clamp(min=1)


# ------------------------------------------------------- losses of the margin h (f-DPO aware)


def sigmoid_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290), eq. 7.

    L = -log σ(β·h); with label_smoothing ε > 0, cDPO (Mitchell 2023): -(1-ε)·log σ(β·h) - ε·log σ(-β·h).
    h is replaced by the f-divergence margin when f_divergence_type is set (f_divergence_logits).
    TRL 1.16 ignores ε here; TRL's DPO documentation still shows cDPO, so preftune keeps it (ε = 0 is TRL's loss).
    """
    return output(smoothed_sigmoid(p.beta * f_divergence_logits(x, p), p.label_smoothing), x, p.beta)


def hinge_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """RSO's hinge-norm loss, Liu et al. 2023 (arXiv 2309.06657): SLiC's hinge (arXiv 2305.10425) on
    likelihoods normalised by the reference; equation number not checked against the paper.

    L = max(0, 1 - β·h)      (1/β is the margin)
    h is replaced by the f-divergence margin when f_divergence_type is set.
    """
    return output(torch.relu(1 - p.beta * f_divergence_logits(x, p)), x, p.beta)


def robust_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """Robust DPO, Chowdhury et al. 2024 (arXiv 2403.00409), the unbiased loss for labels flipped
    with probability ε; equation number not checked against the paper.

    L = (-(1-ε)·log σ(β·h) + ε·log σ(-β·h)) / (1 - 2ε)
    h is replaced by the f-divergence margin when f_divergence_type is set. Needs ε < 1/2.
    """
    eps = p.label_smoothing
    if eps >= 0.5:
        raise ValueError(f"robust needs label_smoothing < 0.5 (its 1/(1-2ε) factor); got {eps}.")
    z = p.beta * f_divergence_logits(x, p)
    return output((-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps), x, p.beta)


def exo_pair_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """EXO, Ji et al. 2024 (arXiv 2402.00856), eq. 16: the pairwise (K = 2) reverse-KL form.

    L = σ(β·h)·(log σ(β·h) - log(1-ε)) + σ(-β·h)·(log σ(-β·h) - log ε)
    i.e. KL(Bernoulli(σ(β·h)) ‖ Bernoulli(1-ε)), minimised at σ(β·h) = 1-ε. Needs 0 < ε < 1;
    the config resolves the default ε = 1e-3. h is replaced by the f-divergence margin when set.
    """
    eps = p.label_smoothing
    if not 0.0 < eps < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (its log ε term); got {eps}.")
    z = p.beta * f_divergence_logits(x, p)
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return output(losses, x, p.beta)


# ----------------------------------------------------------------- other losses of the margin


def ipo_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """IPO, Azar et al. 2023 (arXiv 2310.12036), eq. 17, with β in the role of the paper's τ.

    h_avg = sc/|yc| - sr/|yr|      (scores averaged per completion token, as TRL)
    L     = (h_avg - 1/(2β))²
    sc, sr are the f-divergence scores (`f_divergence_scores`; rc and rr for reverse_kl).
    Rewards are β·rc and β·rr of the summed log-probs, as for every loss (TRL 1.16).
    """
    lc, lr = _lengths(x)
    sc, sr = f_divergence_scores(x, p)
    losses = (sc / lc - sr / lr - 1 / (2 * p.beta)) ** 2
    return output(losses, x, p.beta)


def sigmoid_norm_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """DPO's sigmoid loss on length-normalised log-ratios (Rafailov et al. 2023, arXiv 2305.18290,
    eq. 7, with per-token log-ratios as in SimPO, Meng et al. 2024, arXiv 2405.14734, eq. 4, but
    keeping the reference); TRL's `sigmoid_norm`.

    h_norm = sc/|yc| - sr/|yr|     (sc, sr: f-divergence scores; rc, rr for reverse_kl)
    L      = -log σ(β·h_norm)       (no label smoothing, as TRL)
    """
    lc, lr = _lengths(x)
    sc, sr = f_divergence_scores(x, p)
    return output(-F.logsigmoid(p.beta * (sc / lc - sr / lr)), x, p.beta)


def discopop_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """DiscoPOP (log-ratio modulated loss), Chris Lu et al. 2024 (arXiv 2406.08414), eq. 5.

    l = β·h,  m = σ(l/τ)
    L = -log σ(l)·(1 - m) + exp(-l)·m
    exp(-l)·m is computed as exp(-l + log σ(l/τ)): equal, but finite when l is very negative
    (where exp(-l) alone overflows and m underflows to 0, giving inf·0 = NaN).
    h is replaced by the f-divergence margin when f_divergence_type is set (as TRL 1.16).
    """
    logits = p.beta * f_divergence_logits(x, p)
    modulation = torch.sigmoid(logits / p.discopop_tau)
    losses = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits + F.logsigmoid(logits / p.discopop_tau))
    return output(losses, x, p.beta)


def aot_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """AOT (paired), Melnyk et al. 2024 (arXiv 2406.05882), the paired distributional-alignment loss
    (first-order stochastic dominance via sorting); equation number not checked against the paper.

    For paired data (each prompt has a chosen and a rejected answer), as TRL's `aot`:
    Δ = sort_B(log πθ(yc) - log πθ(yr)) - sort_B(log πref(yc) - log πref(yr))
    L = -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ)
    The two margins are sorted over the batch independently, so loss[i] belongs to the i-th
    sorted position, not to pair i; the loss depends on the whole batch (use large batches).
    Rewards stay per pair.
    """
    policy_sorted, _ = torch.sort(x.policy_chosen_logps - x.policy_rejected_logps, dim=0)
    ref_sorted, _ = torch.sort(x.ref_chosen_logps - x.ref_rejected_logps, dim=0)
    return output(smoothed_sigmoid(p.beta * (policy_sorted - ref_sorted), p.label_smoothing), x, p.beta)


def aot_unpaired_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """AOT (unpaired), Melnyk et al. 2024 (arXiv 2406.05882), the unpaired distributional-alignment
    loss; equation number not checked against the paper.

    For unpaired data (chosen and rejected answers need not share a prompt), as TRL 1.16's
    `aot_unpaired` (older TRL called it `aot_pair`; that name stays accepted and means this):
    Δ = sort_B(rc) - sort_B(rr)
    L = -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ)
    loss[i] belongs to the i-th sorted position, not to pair i. Rewards stay per pair.
    """
    chosen_sorted, _ = torch.sort(x.chosen_logratios, dim=0)
    rejected_sorted, _ = torch.sort(x.rejected_logratios, dim=0)
    return output(smoothed_sigmoid(p.beta * (chosen_sorted - rejected_sorted), p.label_smoothing), x, p.beta)


# -------------------------------------------------- losses of each completion's log-ratio


def nca_pair_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """NCA, Chen et al. 2024 (arXiv 2402.05369), §4, the pairwise-preference (K = 2) NCA loss;
    equation number not checked against the paper.

    L = -log σ(β·rc) - ½·log σ(-β·rc) - ½·log σ(-β·rr)
    Optimises each completion's likelihood, not only their difference: the chosen term alone is
    minimised at β·rc = log 2, the rejected term pushes rr down.
    """
    zc, zr = p.beta * x.chosen_logratios, p.beta * x.rejected_logratios
    losses = -F.logsigmoid(zc) - 0.5 * F.logsigmoid(-zc) - 0.5 * F.logsigmoid(-zr)
    return output(losses, x, p.beta)


def bco_pair_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """BCO, Jung et al. 2024 (arXiv 2404.04656), the binary-classifier loss applied to both answers of
    a pair, as TRL 1.16's `bco_pair`; equation number not checked against the paper.

    L = -log σ(β·rc) - log σ(-β·rr)
    No reward shift δ: TRL 1.16 has none (older TRL subtracted a running mean of the rewards).
    """
    zc, zr = p.beta * x.chosen_logratios, p.beta * x.rejected_logratios
    return output(-F.logsigmoid(zc) - F.logsigmoid(-zr), x, p.beta)


def sppo_hard_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """SPPO, Wu et al. 2024 (arXiv 2405.00675), eq. 4.7 of Algorithm 1 with hard win probabilities
    (P = 1 for the chosen, 0 for the rejected answer), as TRL's `sppo_hard`.

    L = (rc - 1/(2β))² + (rr + 1/(2β))²      (rc, rr raw log-ratios, not scaled by β)
    """
    target = 1 / (2 * p.beta)
    return output((x.chosen_logratios - target) ** 2 + (x.rejected_logratios + target) ** 2, x, p.beta)


def apo_zero_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """APO-zero, D'Oosterlinck et al. 2024 (arXiv 2408.06266), eq. 7.

    L = (1 - σ(β·rc)) + σ(β·rr)
    Raises the chosen and lowers the rejected likelihood: for answers better than the model's own.
    """
    zc, zr = p.beta * x.chosen_logratios, p.beta * x.rejected_logratios
    return output((1 - torch.sigmoid(zc)) + torch.sigmoid(zr), x, p.beta)


def apo_down_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """APO-down, D'Oosterlinck et al. 2024 (arXiv 2408.06266), eq. 8.

    L = σ(β·rc) + (1 - σ(β·(rc - rr)))
    Lowers both likelihoods, the rejected more: for chosen answers worse than the model's own.
    """
    zc = p.beta * x.chosen_logratios
    zh = p.beta * (x.chosen_logratios - x.rejected_logratios)
    return output(torch.sigmoid(zc) + (1 - torch.sigmoid(zh)), x, p.beta)


def sft_loss(x: DPOInputs, p: DPOParams) -> DPOLossOutput:
    """Supervised NLL of the chosen completions, as TRL 1.16's `sft`: not a preference loss of its own
    but the generation term to combine with one (e.g. MPO, Wang et al. 2024, arXiv 2411.10442).

    L = -Σ_b log πθ(yc_b|x_b) / Σ_b |yc_b|     (token mean over the batch's chosen completions)
    One value for the batch, repeated for each pair (so the mean over pairs is L). The log-probs
    are the plain ones even under LD-DPO (`sft_chosen_logps`). Rewards stay β·rc and β·rr.
    """
    logps = x.policy_chosen_logps if x.sft_chosen_logps is None else x.sft_chosen_logps
    batch = -logps.sum() / x.chosen_lengths.sum().clamp(min=1)
    return output(batch.expand(logps.shape[0]), x, p.beta)


# loss_type -> function. Every entry has a hand-derived test in tests/test_losses.py.
DPO_LOSSES: dict[str, DPOLossFn] = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "aot_pair": aot_unpaired_loss,  # older TRL's name of aot_unpaired
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sigmoid_norm": sigmoid_norm_loss,
    "sft": sft_loss,
}

# The losses built on the chosen-minus-rejected score difference, which take the f-divergence scores
# (f_divergence_scores; TRL 1.16's set, sft trivially: it has no margin); the config refuses a
# non-default f_divergence_type with any other.
F_DIVERGENCE_LOSSES: frozenset[str] = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})

# The losses whose formula has the label-noise ε (label_smoothing); the others ignore it (TRL 1.16).
LABEL_SMOOTHING_LOSSES: frozenset[str] = frozenset({"sigmoid", "robust", "exo_pair", "aot", "aot_unpaired", "aot_pair"})
