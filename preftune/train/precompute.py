"""Reference log-probs computed once before training, cached on disk.

`precompute_ref_log_probs=True` runs the reference over the tokenized data once, adds
two columns (`ref_chosen_logps`, `ref_rejected_logps`) that travel with each pair (list
rows: one column, `ref_completion_logps`, one value per answer),
and drops the reference model, so training holds none. The values are cached in
`ref_logps_cache_dir` under a key made of:
- the reference weights: for each tensor its name, shape, dtype, sum and 1,024
  evenly spaced values (a fingerprint, not a full hash: cheap on a 70B model, and
  any real change of weights alters it);
- the tokenized data (the prepared dataset's fingerprint, itself built from the
  rows, the tokenizer and the length limits).
The only training setting that changes the reference's numbers is LD-DPO's `ld_alpha` (its
weights apply to the reference's log-probs too, as TRL 1.16); the caller adds it to the weights
key. A second run with the same key (a beta sweep, a resumed job) loads them and says so.
"""
from __future__ import annotations

import hashlib
import logging
import os

import torch
from safetensors.torch import load_file, save_file

from preftune.data.collate import LIST_REF_COLUMN, REF_COLUMNS, ListBatch, batch_from_inputs
from preftune.files import atomic_write

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    root = os.environ.get("PREFTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "preftune")
    return os.path.join(root, "ref_logps")


def weights_fingerprint(model: torch.nn.Module, exclude_adapters: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(f".{adapter}." in name for adapter in exclude_adapters):
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].float().cpu()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{flat.float().sum().item():.8e}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def reference_fingerprint(provider, policy) -> str:
    """Fingerprint of the weights that make up the reference, whichever provider holds them."""
    from preftune.train.reference import AdapterDisabledReference, AdapterSwitchReference, ModelReference

    if isinstance(provider, ModelReference):
        return weights_fingerprint(provider.model)
    adapters = tuple(getattr(policy, "peft_config", {}))
    if isinstance(provider, AdapterDisabledReference):
        return weights_fingerprint(policy, exclude_adapters=adapters)
    if isinstance(provider, AdapterSwitchReference):
        return weights_fingerprint(policy, exclude_adapters=tuple(a for a in adapters if a != provider.ref_adapter_name))
    raise TypeError(f"cannot fingerprint {type(provider).__name__}")


def cache_key(weights: str, data_fingerprint: str) -> str:
    return hashlib.sha256(f"{weights}|{data_fingerprint}".encode()).hexdigest()[:32]


@torch.no_grad()
def compute_reference_logps(provider, model, dataset, collator, batch_size: int, device, request_for=None) -> dict:
    """(n_pairs,) chosen and rejected reference log-probs, in dataset order; for list rows, every
    answer's ("answers", flat) and the number of answers of each row ("counts").

    request_for: completion_mask -> `LogpsRequest` (the objective's `reference_request`: LD-DPO
    weights), or None."""
    chosen, rejected, answers, counts = [], [], [], []
    was_training = model.training
    model.eval()  # no dropout: the reference is deterministic
    for start in range(0, len(dataset), batch_size):
        features = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = {k: v.to(device) for k, v in collator(features).items()}
        batch = batch_from_inputs(inputs)  # PreferenceBatch, or Seq2SeqBatch for encoder-decoder models
        out = provider.logps(model, batch, None if request_for is None else request_for(batch.completion_mask))
        if isinstance(batch, ListBatch):
            answers.append(out.preference_logps.float().cpu())
            counts.append(torch.bincount(batch.groups.cpu(), minlength=batch.batch_size))
            continue
        b = batch.batch_size
        chosen.append(out.preference_logps[:b].float().cpu())
        rejected.append(out.preference_logps[b:].float().cpu())
    model.train(was_training)
    if answers:
        return {"answers": torch.cat(answers), "counts": torch.cat(counts)}
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


def cache_path(dataset, cache_dir: str | None, weights_key: str) -> str:
    """Where the reference log-probs of `dataset` under the weights `weights_key` are (or will be) cached."""
    return os.path.join(cache_dir or default_cache_dir(), f"{cache_key(weights_key, dataset._fingerprint)}.safetensors")


def attach_reference_logps(dataset, provider, model, collator, *, batch_size, device, cache_dir, weights_key,
                           split: str, request_for=None):
    """The dataset with reference log-prob columns, from the cache or computed now (`provider` None: the cache
    must hold them; the caller checks `cache_path` first)."""
    if dataset is None or REF_COLUMNS[0] in dataset.column_names or LIST_REF_COLUMN in dataset.column_names:
        return dataset
    path = cache_path(dataset, cache_dir, weights_key)
    if os.path.exists(path):
        values = load_file(path)
        logger.warning("%s: reusing precomputed reference log-probs from %s", split, path)
        print(f"preftune: {split}: reusing precomputed reference log-probs ({path})", flush=True)
    else:
        values = compute_reference_logps(provider, model, dataset, collator, batch_size, device, request_for)
        atomic_write(path, writer=lambda tmp: save_file(values, tmp))  # never leave a half-written cache entry
        logger.info("%s: reference log-probs computed and cached at %s", split, path)
    if "counts" in values:  # list rows: each row's answers, in order
        if len(values["counts"]) != len(dataset):
            raise RuntimeError(f"cached reference log-probs at {path} hold {len(values['counts'])} rows, not {len(dataset)}")
        per_row = torch.split(values["answers"], values["counts"].tolist())
        return dataset.add_column(LIST_REF_COLUMN, [v.tolist() for v in per_row])
    if len(values["chosen"]) != len(dataset):
        raise RuntimeError(f"cached reference log-probs at {path} hold {len(values['chosen'])} pairs, not {len(dataset)}")
    dataset = dataset.add_column(REF_COLUMNS[0], values["chosen"].tolist())
    return dataset.add_column(REF_COLUMNS[1], values["rejected"].tolist())
