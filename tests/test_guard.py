"""Non-finite steps: a NaN loss or gradient skips that optimizer step (nothing moves); too many in a row stop the run.

Trainers are built in-process on the bundled tiny model (about a second each). NaN
is injected by wrapping the trainer's objective (loss × NaN) or by a hook on one
parameter's gradient (finite loss, NaN gradient). A callback snapshots the weights
and the optimizer state at every step's start and end.
"""
import json
import math
import os
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from preftune import ORPOConfig, ORPOTrainer

from preftune.train import checkpoints

from preftune import cli
from preftune.assets import tiny_dataset_files, tiny_model_path
from preftune.data.sources import load_preference_data
from preftune.errors import UserError
from preftune.train.guard import NonFiniteGuard, TrainingDiverged

NAN = float("nan")



def _pairs(n=32):
    return load_preference_data(tiny_dataset_files()["train"]).select(range(n))


def _trainer(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0)
    settings.update(overrides)
    return ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=ORPOConfig(**settings),
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_path()), train_dataset=_pairs())


class NaNLoss:
    """The trainer's objective, with its loss multiplied by NaN on the given steps (last micro-batch only)."""

    def __init__(self, trainer, steps, every_micro_batch=False):
        self.inner, self.trainer, self.steps, self.every = trainer.objective, trainer, set(steps), every_micro_batch
        self.calls = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, policy, ref, **kwargs):
        out = self.inner(policy, ref, **kwargs)
        step = self.trainer.state.global_step + 1
        self.calls[step] = self.calls.get(step, 0) + 1
        last = self.calls[step] == self.trainer.args.gradient_accumulation_steps
        if step in self.steps and (self.every or last):
            return replace(out, loss=out.loss * NAN)
        return out


class Snapshots(TrainerCallback):
    """Per step: did the weights change, did the optimizer state change (bitwise)?"""

    def __init__(self):
        self.moved = {}

    @staticmethod
    def _state(model, optimizer):
        params = [p.detach().clone() for p in model.parameters()]
        opt = {k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)} for k, s in optimizer.state.items()}
        return params, opt

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = self._state(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        (p0, o0), (p1, o1) = self.before, self._state(model, optimizer)
        params = any(not torch.equal(a, b) for a, b in zip(p0, p1))
        opt = o0.keys() != o1.keys() or any(not torch.equal(o0[k][n], o1[k][n]) for k in o0 for n in o0[k])
        self.moved[state.global_step] = (params, opt)


def _finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------- transient


def test_transient_nan_loss_skips_exactly_that_step(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    trainer.objective = NaNLoss(trainer, steps=[3])
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    assert trainer.state.global_step == 6 and _finite(trainer.model)
    # step 3: neither the weights nor AdamW's moments/step count moved; every other step moved both
    assert snaps.moved == {1: (True, True), 2: (True, True), 3: (False, False), 4: (True, True), 5: (True, True),
                           6: (True, True)}
    logs = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    assert [logs[s].get("skipped_steps") for s in range(1, 7)] == [None, None, 1, 1, 1, 1]
    out = capsys.readouterr().out
    assert "preftune: step 3: non-finite loss; optimizer step skipped (1 in a row, 1 in this run)" in out
    assert trainer.nonfinite_guard.skipped == 1 and trainer.nonfinite_guard.consecutive == 0


def test_nan_gradient_with_finite_loss_is_skipped(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    weight = dict(trainer.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    weight.register_hook(lambda g: g * NAN if trainer.state.global_step + 1 == 2 else g)
    snaps = Snapshots()
    trainer.add_callback(snaps)
    trainer.train()
    assert snaps.moved[2] == (False, False) and all(snaps.moved[s] == (True, True) for s in (1, 3, 4, 5, 6))
    assert _finite(trainer.model)
    logs = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    assert math.isfinite(logs[2]["loss"]) and logs[2]["skipped_steps"] == 1
    assert "preftune: step 2: non-finite gradients; optimizer step skipped" in capsys.readouterr().out


def test_unguarded_nan_would_poison_the_weights(tmp_path):
    """The control: with the guard's callback removed, the same NaN ends in NaN weights."""
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.objective = NaNLoss(trainer, steps=[3])
    trainer.remove_callback(trainer.nonfinite_guard)
    trainer.train()
    assert not _finite(trainer.model)


# --------------------------------------------------------------- persistent


def test_persistent_nan_stops_the_run_and_keeps_the_checkpoints(tmp_path):
    trainer = _trainer(tmp_path, max_steps=8, save_strategy="steps", save_steps=1, max_nonfinite_steps=2,
                       gradient_accumulation_steps=1)
    trainer.objective = NaNLoss(trainer, steps=range(3, 9), every_micro_batch=True)
    with pytest.raises(TrainingDiverged) as err:
        trainer.train()
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert message.startswith("stopped at step 4: the loss was not finite for 2 steps in a row; the likely cause is "
                              "a learning rate too high for this model (--learning_rate 0.001; try a tenth of it).")
    assert f"resume from {tmp_path / 'checkpoint-3'} after the fix" in message and "--max_nonfinite_steps" in message
    # no checkpoint from the stopped step; the ones before are whole, and the skipped step 3 changed nothing
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "preftune_config.json"]
    assert all(checkpoints.is_complete(tmp_path / f"checkpoint-{s}") for s in (1, 2, 3))
    from safetensors.torch import load_file

    two, three = load_file(tmp_path / "checkpoint-2" / "model.safetensors"), load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(two[k], three[k]) for k in two)
    assert checkpoints.resolve_resume(True, str(tmp_path), say=lambda *_: None) == str(tmp_path / "checkpoint-3")
    with open(tmp_path / "checkpoint-3" / checkpoints.EXTRA_STATE) as f:
        assert json.load(f)["nonfinite_skipped"] == 1


def test_max_nonfinite_steps_zero_never_stops(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4, max_nonfinite_steps=0, gradient_accumulation_steps=1)
    trainer.objective = NaNLoss(trainer, steps=range(1, 5), every_micro_batch=True)
    trainer.train()
    assert trainer.nonfinite_guard.skipped == 4 and trainer.state.global_step == 4
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    assert all(torch.equal(a, b) for a, b in zip(initial.parameters(), trainer.model.parameters()))


def test_persistent_nan_through_the_cli_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import preftune.train.trainer

    real = preftune.train.trainer.objective_from_config

    class NaNFromCall3:
        def __init__(self, inner):
            self.inner, self.n = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, policy, ref, **kwargs):
            self.n += 1
            out = self.inner(policy, ref, **kwargs)
            return replace(out, loss=out.loss * NAN) if self.n >= 3 else out

    monkeypatch.setattr(preftune.train.trainer, "objective_from_config", lambda args: NaNFromCall3(real(args)))
    out_dir = tmp_path / "run"
    code = cli.main(["orpo", "--model", tiny_model_path(), "--dataset", f"{tiny_dataset_files()['train']}#16",
                     "--output_dir", str(out_dir), "--max_steps", "4", "--per_device_train_batch_size", "4",
                     "--save_strategy", "steps", "--save_steps", "1", "--max_nonfinite_steps", "2",
                     "--learning_rate", "1e-4", "--report_to", "none", "--use_cpu", "true"])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("preftune: error: ")]
    assert len(errors) == 1 and errors[0].startswith("preftune: error: stopped at step 4: the loss was not finite for 2 steps")
    assert f"resume from {out_dir / 'checkpoint-3'}" in errors[0]
    assert "preftune: step 3: non-finite loss; optimizer step skipped (1 in a row, 1 in this run)" in captured.out
    assert not (out_dir / "model.safetensors").exists()  # no final save from a stopped run
    assert checkpoints.is_complete(out_dir / "checkpoint-3") and not (out_dir / "checkpoint-4").exists()


# ----------------------------------------------------- the callback, directly


def _step(guard, model, *, loss=1.0, grad=1.0, global_step=0, fp16=False, lr=1e-5, out="/nonexistent"):
    for p in model.parameters():
        p.grad = torch.full_like(p, grad)
    guard.note_loss(torch.tensor(loss))
    args = SimpleNamespace(fp16=fp16, learning_rate=lr, output_dir=out, device=torch.device("cpu"))
    state = SimpleNamespace(global_step=global_step, is_world_process_zero=True)
    guard.on_pre_optimizer_step(args, state, None, model=model)
    return [p.grad for p in model.parameters()]


def test_guard_counts_in_a_row_and_resets_on_a_good_step():
    model = torch.nn.Linear(3, 2)
    guard = NonFiniteGuard(3)
    assert all(g is not None for g in _step(guard, model))
    assert all(g is None for g in _step(guard, model, loss=NAN, global_step=1))
    assert all(g is None for g in _step(guard, model, grad=math.inf, global_step=2))
    assert (guard.consecutive, guard.skipped) == (2, 2)
    _step(guard, model, global_step=3)
    assert (guard.consecutive, guard.skipped) == (0, 2)
    _step(guard, model, loss=NAN, global_step=4)
    _step(guard, model, loss=NAN, global_step=5)
    with pytest.raises(TrainingDiverged, match="stopped at step 7: the loss was not finite for 3 steps in a row"):
        _step(guard, model, loss=NAN, global_step=6)


def test_guard_names_model_or_data_when_no_step_was_ever_finite():
    model = torch.nn.Linear(3, 2)
    guard = NonFiniteGuard(2)
    _step(guard, model, grad=NAN)
    with pytest.raises(TrainingDiverged) as err:
        _step(guard, model, grad=NAN, global_step=1)
    message = str(err.value)
    assert message.startswith("stopped at step 2: the gradients were not finite for 2 steps in a row; the likely cause "
                              "is the model or data (it was never finite")
    assert "no checkpoint was saved before it" in message


def test_guard_leaves_fp16_overflow_to_the_loss_scaler():
    """Under fp16 the scaler skips overflowing steps and lowers its scale; the guard must not hide the
    overflow from it (no grads dropped) nor count it (a fresh scale overflows for a few steps by design)."""
    model = torch.nn.Linear(3, 2)
    guard = NonFiniteGuard(2)
    for step in range(5):
        grads = _step(guard, model, grad=math.inf, global_step=step, fp16=True)
        assert all(g is not None for g in grads)
    assert guard.skipped == 0
    _step(guard, model, loss=NAN, global_step=5, fp16=True)  # a non-finite forward no scale can fix: counted
    with pytest.raises(TrainingDiverged, match="likely cause is fp16 overflow"):
        _step(guard, model, loss=NAN, global_step=6, fp16=True)


def test_huge_but_finite_gradients_are_not_called_non_finite():
    model = torch.nn.Linear(3, 2)
    guard = NonFiniteGuard(1)
    grads = _step(guard, model, grad=3e19)  # its norm overflows float32, every value is finite
    assert all(g is not None for g in grads) and guard.skipped == 0
