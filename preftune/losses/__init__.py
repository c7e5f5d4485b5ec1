"""Preference losses as pure functions of per-sequence log-probabilities.

Every function takes tensors of shape (B,) — one value per preference pair — and
returns a named container with a per-pair loss (B,) and the implicit rewards (B,).
Nothing here imports transformers: the math is testable alone.

  orpo.py          ORPO (`orpo_loss`) and the stable `log1mexp`
  dpo.py           the DPO family's containers, `f_divergence_logits`, `combine`
  dpo_variants.py  one function per DPO `loss_type`, the `DPO_LOSSES` table

Departures from the papers / from TRL, and why:
- ORPO's NLL term is averaged per pair (each pair's token-mean NLL, then the mean
  over pairs) instead of over all tokens of the batch as in the official code. With
  one pair per batch the two agree; ours makes gradient accumulation exact (4×1
  equals 1×4) and gives every pair equal weight whatever its length.
- log(1 - p) in ORPO's odds is computed as log(-expm1(x)) with x clamped just below
  0, so a completion whose probability rounds to 1 gives a large finite odds, not NaN.
- `sft` is each pair's token-mean NLL of the chosen answer; TRL divides the batch's
  summed NLL by its total token count. Same reason as ORPO's NLL above.
- `ipo` and `sigmoid_norm` divide their own log-ratios by the completion lengths; TRL
  instead divides all log-probs of the step when "ipo" is among several loss types,
  which changes the other losses too. Ours keeps each loss what its name says.
- f-divergences (f-DPO) apply to sigmoid, hinge, robust and exo_pair only
  (F_DIVERGENCE_LOSSES). TRL 0.x also feeds its f-divergence margin to ipo; IPO's
  derivation is for the identity mapping Ψ, not for a divergence, so we refuse it.
- The exponentials of forward_kl / alpha_divergence are capped 10 nats below the
  dtype's largest value (and by log α), and half precision is computed in float32;
  TRL's cap_exp stops at log(max) itself, where exp(.)/α with α < 1, or β·h, can
  still overflow to inf.
- discopop's exp(-l)·σ(l/τ) is computed as exp(-l + log σ(l/τ)): the same number,
  without the inf·0 = NaN that TRL's form gives for very negative l.
- exo_pair raises for ε = 0 and robust for ε ≥ 1/2 instead of changing ε silently
  (TRL sets ε = 1e-3 for exo_pair inside the loss); the config resolves the default.
- bco_pair's running reward mean δ is state, so it lives with the caller and comes in
  through DPOParams.bco_delta; the function stays pure.
- aot / aot_pair return one loss per sorted position (as TRL), so `losses[i]` is not
  pair i's; their value depends on the whole batch.
"""
from preftune.losses.dpo import F_DIVERGENCES, DPOInputs, DPOLossFn, DPOLossOutput, DPOParams, combine, f_divergence_logits
from preftune.losses.dpo_variants import (
    DPO_LOSSES,
    F_DIVERGENCE_LOSSES,
    LABEL_SMOOTHING_LOSSES,
    aot_loss,
    aot_pair_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    nca_pair_loss,
    robust_loss,
    sft_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    sppo_hard_loss,
)
from preftune.losses.orpo import ORPOLossOutput, log1mexp, orpo_loss

__all__ = [
    "DPO_LOSSES",
    "F_DIVERGENCES",
    "F_DIVERGENCE_LOSSES",
    "LABEL_SMOOTHING_LOSSES",
    "DPOInputs",
    "DPOLossFn",
    "DPOLossOutput",
    "DPOParams",
    "ORPOLossOutput",
    "aot_loss",
    "aot_pair_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "combine",
    "discopop_loss",
    "exo_pair_loss",
    "f_divergence_logits",
    "hinge_loss",
    "ipo_loss",
    "log1mexp",
    "nca_pair_loss",
    "orpo_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "sppo_hard_loss",
]
