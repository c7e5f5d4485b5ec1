"""Preference losses as pure functions of per-sequence log-probabilities.

Every function takes tensors of shape (B,) — one value per preference pair — and
returns a named container with a per-pair loss (B,) and the implicit rewards (B,).
Nothing here imports transformers: the math is testable alone.

  orpo.py          ORPO (`orpo_loss`) and the stable `log1mexp`
  dpo.py           the DPO family's containers, `f_divergence_logits`, `combine`
  dpo_variants.py  one function per DPO `loss_type`, the `DPO_LOSSES` table
  cpo.py           the reference-free CPO family (CPO, SimPO, AlphaPO), the `CPO_LOSSES` table
  kto.py           KTO and unpaired APO-zero (`kto_loss`), z₀ (`kl_estimate`, `kl_reference_point`)
  listwise.py      lists of K scored answers per prompt, padded (G, K): which pairs (`ordered_pairs`),
                   Plackett–Luce DPO and LiPO-λ (`LIST_LOSSES`), per-prompt means of pair losses

Departures from the papers / from TRL 1.16, and why (the numbers otherwise equal TRL 1.16's
DPOTrainer and experimental ORPOTrainer; tests/test_trl_parity.py runs both):
- ORPO's NLL (TRL: the cross-entropy over every non-padding token of the batch's chosen rows,
  one token mean for the batch) is passed in by the caller; `orpo_loss` takes it as a scalar
  (broadcast over the pairs) or per pair.
- log(1 - p) in ORPO's odds is computed as log(-expm1(x)) with x clamped just below 0, so a
  completion whose probability rounds to 1 gives a large finite odds, not NaN (TRL's log1mexp
  has the same two branches; only the clamp is ours).
- `sigmoid` with label_smoothing ε > 0 is cDPO, as TRL's DPO documentation shows; TRL 1.16's
  code ignores ε for `sigmoid` (its loss is ours at ε = 0). ε is also used by robust, exo_pair,
  aot and aot_unpaired.
- The exponentials of forward_kl / alpha_divergence are capped 10 nats below the dtype's
  largest value (and by log|α - 1| when |α - 1| < 1), half precision is computed in float32;
  TRL clamps alpha_divergence's exponent at 80 (fp32, bf16) or 11 (fp16) and does not cap
  forward_kl. Same values wherever neither cap binds (|log-ratio| below ~78 nats).
- discopop's exp(-l)·σ(l/τ) is computed as exp(-l + log σ(l/τ)): the same number, without
  the inf·0 = NaN that TRL's form gives for very negative l.
- exo_pair raises for ε = 0 and robust for ε ≥ 1/2 (TRL: an error and a warning); the config
  resolves exo_pair's default ε = 1e-3.
- `aot_pair` is accepted as older TRL's name of `aot_unpaired` (the same function).
- aot / aot_unpaired return one loss per sorted position (as TRL), so `losses[i]` is not
  pair i's; their value depends on the whole batch. `sft` returns the batch's token-mean NLL
  repeated per pair (as TRL), so its mean over pairs is that value.
"""
from preftune.losses.cpo import (CPO_LABEL_SMOOTHING_LOSSES, CPO_LOSSES, CPOLossFn, CPOLossOutput, CPOParams,
                                 alphapo_reward, cpo_hinge_loss, cpo_ipo_loss, cpo_sigmoid_loss, simpo_loss)
from preftune.losses.dpo import (F_DIVERGENCES, DPOInputs, DPOLossFn, DPOLossOutput, DPOParams, combine,
                                 f_divergence_logits, f_divergence_scores)
from preftune.losses.dpo_variants import (
    DPO_LOSSES,
    F_DIVERGENCE_LOSSES,
    LABEL_SMOOTHING_LOSSES,
    aot_loss,
    aot_unpaired_loss,
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
from preftune.losses.kto import (KTO_LOSS_TYPES, KTOLossOutput, kl_estimate, kl_reference_point, kto_loss,
                                 weighting_rule)
from preftune.losses.listwise import (LIST_LOSSES, LIST_PAIR_MODES, ListLossFn, lipo_loss, ordered_pair_mask,
                                      ordered_pairs, pairwise_mean_per_prompt, plackett_luce_loss)
from preftune.losses.orpo import ORPOLossOutput, log1mexp, orpo_loss

__all__ = [
    "CPO_LABEL_SMOOTHING_LOSSES",
    "CPO_LOSSES",
    "CPOLossFn",
    "CPOLossOutput",
    "CPOParams",
    "alphapo_reward",
    "cpo_hinge_loss",
    "cpo_ipo_loss",
    "cpo_sigmoid_loss",
    "simpo_loss",
    "DPO_LOSSES",
    "F_DIVERGENCES",
    "F_DIVERGENCE_LOSSES",
    "LABEL_SMOOTHING_LOSSES",
    "KTO_LOSS_TYPES",
    "LIST_LOSSES",
    "LIST_PAIR_MODES",
    "ListLossFn",
    "KTOLossOutput",
    "DPOInputs",
    "DPOLossFn",
    "DPOLossOutput",
    "DPOParams",
    "ORPOLossOutput",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "combine",
    "discopop_loss",
    "exo_pair_loss",
    "f_divergence_logits",
    "f_divergence_scores",
    "hinge_loss",
    "ipo_loss",
    "kl_estimate",
    "kl_reference_point",
    "kto_loss",
    "lipo_loss",
    "log1mexp",
    "nca_pair_loss",
    "ordered_pair_mask",
    "ordered_pairs",
    "orpo_loss",
    "pairwise_mean_per_prompt",
    "plackett_luce_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "sppo_hard_loss",
    "weighting_rule",
]
