"""Skip optimizer steps whose loss or gradients are not finite; stop after too many in a row.

One NaN gradient applied by AdamW poisons every weight it touches, and the run keeps
going, saving NaN checkpoints over good ones. The guard looks at the accumulated
gradients just before `optimizer.step()` (after clipping, after the all-reduce, so
every process decides the same): when any is NaN/inf, or a micro-batch's loss was,
it drops the gradients (`p.grad = None`), which makes torch optimizers skip every
parameter — no update, no moment decay, no weight decay, no step count. The learning
rate schedule still advances (the step is spent, as the data it saw is).

After `max_nonfinite_steps` such steps in a row the run stops with `TrainingDiverged`,
naming the step and the likely cause; checkpoints already saved are left as they are,
and no checkpoint is written from the stopped run.

Decisions:

- With several processes the verdict is all-reduced (any process saw a bad loss or
  gradient: every process skips), so replicas, and FSDP shards, never drift apart.
- Under fp16 the loss scaler owns overflowing gradients: it skips those steps and
  lowers the scale, and its first steps overflow by design. The guard then leaves
  gradients alone (dropping them would hide the overflow from the scaler) and
  counts only non-finite losses, which no loss scale can fix.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from preftune.errors import UserError


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
        fp16 = bool(getattr(args, "fp16", False))
        params = [p for p in model.parameters() if p.grad is not None]
        bad_grad = not fp16 and bool(params) and not _all_finite([p.grad for p in params])
        bad_loss, self._bad_loss = self._bad_loss, False
        bad_loss, bad_grad = _any_process(bad_loss, bad_grad, getattr(args, "device", None))
        if not (bad_grad or bad_loss):
            self.consecutive = 0
            return
        if not fp16:  # under fp16 the loss scaler skips the step itself (see the module docstring)
            for p in params:
                p.grad = None
        self.skipped += 1
        self.consecutive += 1
        step = state.global_step + 1
        what = "loss" if bad_loss else "gradients"
        if state.is_world_process_zero:
            print(f"preftune: step {step}: non-finite {what}; optimizer step skipped "
                  f"({self.consecutive} in a row, {self.skipped} in this run)", flush=True)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(_diverged_message(args, state, step, self.consecutive, what))


def _all_finite(grads: list[torch.Tensor]) -> bool:
    """One fused norm pass per device; a NaN or inf anywhere makes its norm non-finite. A norm that
    overflowed although every value is finite (gradients near 1e19) is checked value by value."""
    by_device: dict = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for group in by_device.values():
        norms = torch._foreach_norm(group)
        if not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
            return all(bool(torch.isfinite(g).all()) for g in group)
    return True


def _any_process(bad_loss: bool, bad_grad: bool, device) -> tuple[bool, bool]:
    """The flags OR-ed over every process of a distributed run (unchanged in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bad_loss, bad_grad
    flags = torch.tensor([float(bad_loss), float(bad_grad)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item()), bool(flags[1].item())


def _diverged_message(args, state, step: int, n: int, what: str) -> str:
    if getattr(args, "fp16", False):
        cause = "fp16 overflow (train in bf16 or fp32 instead)"
    elif n == step:  # every step so far was skipped
        cause = "the model or data (it was never finite: check the model loads in this dtype and the pairs are sane)"
    else:
        cause = f"a learning rate too high for this model (--learning_rate {args.learning_rate:g}; try a tenth of it)"
    from preftune.train.checkpoints import last_complete

    last = last_complete(args.output_dir)[0]
    resume = f"resume from {last} after the fix" if last else "no checkpoint was saved before it"
    verb = "was" if what == "loss" else "were"
    return (f"stopped at step {step}: the {what} {verb} not finite for {n} steps in a row; the likely cause is {cause}. "
            f"Weights were not updated by those steps; {resume} "
            f"(--max_nonfinite_steps sets how many in a row are tolerated).")
