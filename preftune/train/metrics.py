"""The step's metrics, kept as sums and counts and gathered once: the trainers' `_store_metrics` and `log`.

`StoredMetrics` is a mixin of `PreferenceTrainer` (a `transformers.Trainer`): it uses the Trainer's
accelerator and `log`, and the trainer's `_stored_metrics`, `_total_train_tokens` and `nonfinite_guard`.
"""
from __future__ import annotations

import torch


class StoredMetrics:
    """Exact means since the last log, for per-row metrics and token-weighted ones (see `_store_metrics`)."""

    def _store_metrics(self, metrics: dict, split: str, token_metrics: dict | None = None,
                       train_tokens=None) -> None:
        """Keep sums and counts, so a logged value is the exact mean since the last log.

        metrics: name -> (B,) per-pair values (a per-batch value such as the MoE aux_loss is
        repeated over the pairs), logged as the mean over all pairs. token_metrics: name ->
        (numerator, denominator) scalars, logged as Σ numerators / Σ denominators (token-weighted,
        as TRL's entropy, mean_token_accuracy, logits/*). train_tokens: this batch's attention-mask
        tokens, added to the cumulative `num_tokens`.
        Everything of the step is gathered in ONE collective and read back in one sync.
        """
        token_metrics = token_metrics or {}
        names = list(metrics)
        n_pairs = max([v.numel() for v in metrics.values()] + [1])
        columns = [v.detach().float().reshape(-1).expand(n_pairs) for v in metrics.values()]
        # Scalars ride in row 0 of extra columns (zeros elsewhere), so the one gather carries them too.
        scalars = [t for pair in token_metrics.values() for t in pair]
        if train_tokens is not None:
            scalars.append(train_tokens)
        for value in scalars:
            column = torch.zeros(n_pairs, device=value.device, dtype=torch.float64)
            column[0] = value.detach().double()
            columns.append(column)
        stacked = torch.stack([c.double() for c in columns], dim=1)  # fp64: token counts stay exact
        gathered = self.accelerator.gather_for_metrics(stacked)  # (B_all, K): every process's pairs
        sums = gathered.sum(0).tolist()
        for name, total in zip(names, sums):
            stored = self._stored_metrics[split][name]
            stored[0] += total
            stored[1] += gathered.shape[0]
        rest = iter(sums[len(names):])
        for name in token_metrics:
            stored = self._stored_metrics[split][name]
            stored[0] += next(rest)
            stored[1] += next(rest)
        if train_tokens is not None:
            self._total_train_tokens = (self._total_train_tokens or 0) + int(round(next(rest)))

    def log(self, logs: dict, start_time=None) -> None:
        from preftune.outputs.history import eval_prefix

        prefix = eval_prefix(logs)
        split, prefix = ("train", "") if prefix is None else ("eval", prefix)
        for name, (total, count) in self._stored_metrics[split].items():
            logs[prefix + name] = total / count if count else 0.0
        if self._stored_metrics[split] and self._total_train_tokens is not None:
            logs[prefix + "num_tokens"] = self._total_train_tokens  # as TRL: the train total, in eval logs too
        self._stored_metrics[split].clear()
        if split == "train" and "loss" in logs and self.nonfinite_guard.skipped:
            logs["skipped_steps"] = self.nonfinite_guard.skipped
        super().log(logs, start_time)
