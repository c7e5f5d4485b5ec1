"""activation_offloading: saved activations go through the offload hooks, the gradients stay identical."""
import torch

from preftune.train.offload import ActivationOffloading

from .tiny import tiny_causal_lm


def grads(model, ids):
    model.zero_grad()
    model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


class OnCPU(ActivationOffloading):
    """Treats CPU activations as offloadable, so the copy-out / copy-back path runs on a CPU-only machine."""

    def offloadable(self, tensor):
        return (tensor.numel() * tensor.element_size() >= self.min_bytes
                and tensor.untyped_storage().data_ptr() not in self.param_storages)


def test_offloaded_activations_give_identical_gradients():
    model = tiny_causal_lm("llama")
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    want = grads(model, ids)
    copies = []

    class Seen(OnCPU):
        def _pack(self, tensor):  # what the pack hook hands autograd
            copies.append(super()._pack(tensor))
            return copies[-1]

    with Seen(model, pin_memory=False) as hooks:
        got = grads(model, ids)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit-identical
    assert hooks.offloaded > 0 and hooks.kept > 0  # activations copied out; parameters (and tiny tensors) kept
    moved = [c for c in copies if isinstance(c, tuple)]
    assert len(moved) == hooks.offloaded and all(dev.type == "cpu" and t.device.type == "cpu" for dev, t in moved)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(t.untyped_storage().data_ptr() in params for _, t in moved)  # no weight was copied


def test_nothing_moves_on_a_cpu_run():
    model = tiny_causal_lm("llama")
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with ActivationOffloading(model) as hooks:
        grads(model, ids)
    assert hooks.offloaded == 0 and hooks.kept > 0


def test_trainer_wraps_the_training_step(tmp_path, monkeypatch):
    """With the flag, each training step (forward and backward) runs inside the hooks; the run is unchanged."""
    import preftune.train.trainer as trainer_module
    from preftune import ORPOConfig, ORPOTrainer

    from .test_trainer import pairs, tiny

    entered = []

    class Recording(OnCPU):
        def __enter__(self):
            entered.append(self)
            return super().__enter__()

    monkeypatch.setattr(trainer_module, "ActivationOffloading", Recording)
    runs = {}
    for offload in (False, True):
        model, tok = tiny()
        args = ORPOConfig(output_dir=str(tmp_path / str(offload)), max_steps=2, per_device_train_batch_size=2,
                          learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", activation_offloading=offload,
                          seed=0)
        trainer = ORPOTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs(4))
        trainer.train()
        assert len(entered) == (2 if offload else 0)  # once per training step, only with the flag
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert len(losses) == 2
        runs[offload] = losses, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert all(h.offloaded > 0 for h in entered)  # the forward's activations went through the pack hook
    assert runs[True][0] == runs[False][0] and torch.equal(runs[True][1], runs[False][1])  # identical training
