"""Where DPO's reference log-probs come from.

Chosen once, when the trainer is built (`reference_for`), never re-decided per step:
- `ModelReference`: a separate frozen model (the one given, or a copy of the policy);
- `AdapterDisabledReference`: the policy with its PEFT adapter switched off — the
  base weights are the reference, so no second copy of the model is held;
- `AdapterSwitchReference`: a second adapter on the same base (seed 004's option 3);
- `PrecomputedReference`: log-probs computed once before training (see
  `preftune.train.precompute`) and carried in the batch; no reference model in memory.
ORPO and reference-free DPO use no provider (None).

A provider that runs a model computes with a log-prob path chosen once for that model
(`preftune.logps.choose_logps_path`, at its first call: the reference model may not be built
like the policy, and accelerate may wrap it after the trainer is built).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field

import torch

from preftune.data.collate import PreferenceBatch
from preftune.errors import ConfigError
from preftune.logps import LogpsOptions, LogpsPath, LogpsRequest, SequenceLogps, choose_logps_path, unwrap

logger = logging.getLogger(__name__)


@dataclass
class _Chunking:
    options: LogpsOptions = field(default_factory=LogpsOptions)
    # Chosen at the first call, for the model this provider runs (which may not be the policy), then kept.
    path: LogpsPath | None = field(default=None, repr=False)

    def run(self, model, batch: PreferenceBatch, request: LogpsRequest | None = None) -> SequenceLogps:
        """request: the objective's `reference_request` (LD-DPO weights), or None."""
        if self.path is None:
            self.path = choose_logps_path(model, self.options)
            logger.info("reference %s", self.path.description)
        with torch.no_grad():
            return self.path(model, batch) if request is None else self.path(model, batch, request)


@dataclass
class ModelReference(_Chunking):
    model: torch.nn.Module = field(default=None)
    kind = "a frozen reference model"

    def logps(self, policy_model, batch: PreferenceBatch, request: LogpsRequest | None = None) -> SequenceLogps:
        return self.run(self.model, batch, request)

    @contextlib.contextmanager
    def as_model(self, policy_model):
        """The reference as a model to call (e.g. to generate with)."""
        yield self.model


@dataclass
class AdapterDisabledReference(_Chunking):
    kind = "the policy with its adapter disabled"

    def logps(self, policy_model, batch: PreferenceBatch, request: LogpsRequest | None = None) -> SequenceLogps:
        with self.as_model(policy_model) as model:
            return self.run(model, batch, request)

    @contextlib.contextmanager
    def as_model(self, policy_model):
        with unwrap(policy_model, keep_peft=True).disable_adapter():
            yield policy_model


@dataclass
class AdapterSwitchReference(_Chunking):
    model_adapter_name: str = "default"
    ref_adapter_name: str = "reference"
    kind = "a second adapter on the same model"

    def logps(self, policy_model, batch: PreferenceBatch, request: LogpsRequest | None = None) -> SequenceLogps:
        with self.as_model(policy_model) as model:
            return self.run(model, batch, request)

    @contextlib.contextmanager
    def as_model(self, policy_model):
        peft_model = unwrap(policy_model, keep_peft=True)
        peft_model.set_adapter(self.ref_adapter_name)
        try:
            yield policy_model
        finally:
            peft_model.set_adapter(self.model_adapter_name)  # also makes the trained adapter trainable again


@dataclass
class PrecomputedReference:
    kind = "precomputed reference log-probs"

    def logps(self, policy_model, batch: PreferenceBatch, request: LogpsRequest | None = None) -> SequenceLogps:
        """The precomputed values (LD-DPO weighted when they were computed with weights)."""
        if batch.ref_logps is None:
            raise RuntimeError("precompute_ref_log_probs is on but the batch carries no reference log-probs")
        zeros = torch.zeros_like(batch.ref_logps)
        return SequenceLogps(batch.ref_logps, zeros, zeros, zeros, zeros)

    @contextlib.contextmanager
    def as_model(self, policy_model):
        yield None  # no reference model exists


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent, frozen, eval-mode copy of the policy's current weights."""
    ref = copy.deepcopy(model)
    return freeze(ref)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference_for(args, model, ref_model, needs_reference: bool, is_peft: bool, copy_policy: bool = True):
    """The provider of reference log-probs; None when the objective needs none (`needs_reference`,
    e.g. reference-free DPO).

    With copy_policy=False (precomputing before any update) the policy itself is the
    reference, so no copy is ever made.
    """
    if not needs_reference:
        return None
    # The reference computes each pair's prompt once too (logps_prefix_sharing). An earlier build
    # measured its packed no-grad forward ~4x slower than the plain one on CPU; with the current
    # head and masks it is as fast and computes 2.20 instead of 2.66 positions per token
    # (benchmarks/README.md, "reference with prefix sharing").
    chunking = {"options": LogpsOptions.from_args(args)}
    if args.ref_adapter_name is not None:
        if not is_peft or args.ref_adapter_name not in getattr(model, "peft_config", {}):
            raise ConfigError(f"ref_adapter_name={args.ref_adapter_name!r} is not an adapter of the model; load it with "
                              "model.load_adapter(path, adapter_name=...) first.")
        if args.model_adapter_name not in model.peft_config:
            raise ConfigError(f"model_adapter_name={args.model_adapter_name!r} is not an adapter of the model.")
        model.set_adapter(args.model_adapter_name)
        return AdapterSwitchReference(model_adapter_name=args.model_adapter_name,
                                      ref_adapter_name=args.ref_adapter_name, **chunking)
    if ref_model is not None:
        return ModelReference(model=freeze(ref_model), **chunking)
    if is_peft:
        if args.sync_ref_model:
            raise ConfigError("sync_ref_model (TR-DPO) needs a separate reference model, but with a PEFT adapter the "
                              "reference is the base model itself; pass ref_model or drop sync_ref_model.")
        return AdapterDisabledReference(**chunking)
    return ModelReference(model=frozen_copy(model) if copy_policy else model, **chunking)
