"""`activation_offloading`: activations saved for backward wait in CPU memory, not on the accelerator.

PyTorch's saved-tensors hooks (`torch.autograd.graph.saved_tensors_hooks`) see every tensor
autograd keeps for the backward pass; the trainer enters `ActivationOffloading(model)` around
each training step (forward and backward), so each such activation is copied to the CPU when
saved and back to its device when backward needs it. Peak accelerator memory then holds the
activations of one layer's backward at a time instead of the whole forward's, for the cost of
the copies (pinned host memory on CUDA, so they are fast DMA transfers).

Departure from `torch.autograd.graph.save_on_cpu`, which this otherwise is: the model's
parameters (and views of them, which autograd saves too: a linear layer keeps its weight),
tensors already on the CPU and tensors under `min_bytes` stay where they are — copying every
weight to the host and back on each step would cost as much as the activations save. TRL's
`OffloadActivations` makes the same exceptions (and overlaps the copies with CUDA streams, which
this does not). On a CPU-only run nothing is moved: the flag changes nothing there.

Not handled: parameters that exist only while gathered (FSDP, DeepSpeed ZeRO-3) are not
recognised as parameters and would be copied like activations.
"""
from __future__ import annotations

import torch


class ActivationOffloading(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: tensors saved for backward inside it are kept on the CPU (see the module docstring).

    pin_memory: page-locked host copies (default: when CUDA is available); min_bytes: smaller tensors stay.
    `offloaded` counts the tensors moved, `kept` those left in place (tests and logs read them).
    """

    def __init__(self, model: torch.nn.Module, pin_memory: bool | None = None, min_bytes: int = 1024):
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.min_bytes = min_bytes
        self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.offloaded = 0
        self.kept = 0
        super().__init__(self._pack, self._unpack)

    def __enter__(self) -> "ActivationOffloading":
        super().__enter__()
        return self

    def offloadable(self, tensor: torch.Tensor) -> bool:
        """Whether a saved tensor goes to the CPU: an activation on an accelerator, not tiny, not a parameter."""
        return (tensor.device.type != "cpu" and not tensor.is_sparse
                and tensor.numel() * tensor.element_size() >= self.min_bytes
                and tensor.untyped_storage().data_ptr() not in self.param_storages)

    def _pack(self, tensor: torch.Tensor):
        if not self.offloadable(tensor):
            self.kept += 1
            return tensor
        self.offloaded += 1
        host = torch.empty(tensor.size(), dtype=tensor.dtype, device="cpu", pin_memory=self.pin_memory)
        host.copy_(tensor)
        return tensor.device, host

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=host.is_pinned())
