"""Skip optimizer steps whose loss or gradients are not finite; stop after too many in a row.

One NaN gradient applied by AdamW poisons every weight it touches, and the run keeps
going, saving NaN checkpoints over good ones. The guard looks at the accumulated
gradients just before `optimizer.step()` (after clipping, after the all-reduce, so
every process decides the same): when any is NaN/inf, or a micro-batch's loss was,
it drops the gradients (`p.grad = None`), which makes torch optimizers skip every
parameter — no update, no moment decay, no weight decay, no step count. The learning
rate schedule still advances, as with fp16 loss scaling's skipped steps.

After `max_nonfinite_steps` such steps in a row the run stops with `TrainingDiverged`,
naming the step and the likely cause; checkpoints already saved are left as they are,
and no checkpoint is written from the stopped run.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from .errors import UserError


class TrainingDiverged(UserError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped = 0  # over the whole run
        self.consecutive = 0
        self._bad_loss = False  # a micro-batch of the current step had a non-finite loss

    def note_loss(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = True

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        bad_grad = bool(params) and not _all_finite([p.grad for p in params])
        bad_loss, self._bad_loss = self._bad_loss, False
        if not (bad_grad or bad_loss):
            self.consecutive = 0
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        step = state.global_step + 1
        what = "loss" if bad_loss else "gradients"
        print(f"preftune: step {step}: non-finite {what}; optimizer step skipped "
              f"({self.consecutive} in a row, {self.skipped} in this run)", flush=True)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(_diverged_message(args, state, step, self.consecutive, what))


def _all_finite(grads: list[torch.Tensor]) -> bool:
    norms = torch._foreach_norm(grads)  # one fused pass; a NaN or inf anywhere makes its norm non-finite
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def _diverged_message(args, state, step: int, n: int, what: str) -> str:
    if getattr(args, "fp16", False):
        cause = "fp16 overflow (train in bf16 or fp32 instead)"
    elif state.global_step == 0:
        cause = "the model or data (it was never finite: check the model loads in this dtype and the pairs are sane)"
    else:
        cause = f"a learning rate too high for this model (--learning_rate {args.learning_rate:g}; try a tenth of it)"
    from .checkpoints import last_complete

    last = last_complete(args.output_dir)[0]
    resume = f"resume from {last} after the fix" if last else "no checkpoint was saved before it"
    verb = "was" if what == "loss" else "were"
    return (f"stopped at step {step}: the {what} {verb} not finite for {n} steps in a row; the likely cause is {cause}. "
            f"Weights were not updated by those steps; {resume} "
            f"(--max_nonfinite_steps sets how many in a row are tolerated).")
