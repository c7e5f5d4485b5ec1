"""GPU check, parts a and b: log-prob exactness under bf16 autocast, and the flash-attention path.

Part a (`bf16_exactness`) runs a small random-init Llama three ways — fp32, fp32 weights under
bf16 autocast (the Trainer's `bf16=True` with fp32 weights), bf16 weights under bf16 autocast —
and in each compares preftune's fast log-prob paths (the chunked head with its closed-form
backward, the chunked head with checkpointed chunks, small chunks, prefix sharing) with the
plain computation (full logits, log-softmax, gather), values and gradients. In fp32 the paths
must agree to rounding; in bf16 the plain computation is itself off from the fp32 one, so a fast
path passes when it is no further from the fp32 result than twice the plain bf16 path is (plus
a small floor): it must not add error of its own.

Part b (`flash_attention`) records which flash kernels exist (the flash-attn package: FA2/FA3;
the `kernels` package, which fetches kernels from the Hub and so is not tried offline; sdpa's
own flash kernel, probed with a causal call and with a custom mask, which it does not take),
what `choose_logps_path` says for each attention implementation (prefix sharing needs a 4D
mask, so under flash it falls back and says why), and compares the padding-free flash log-probs
with padded sdpa ones and runs one ORPO and one DPO step with flash and padding_free. Without
flash-attn 2/3 (and in a dry run) sdpa stands in for flash in those two checks, and says so.

Both are called by scripts/gpu_check.py with a `Context` (device, sizes, work folder).
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

# Tolerances, stated in the report.
FP32_VALUE_ATOL, FP32_VALUE_RTOL, FP32_GRAD_RTOL = 1e-3, 1e-5, 1e-4
BF16_FACTOR, BF16_VALUE_FLOOR, BF16_GRAD_FLOOR = 2.0, 0.05, 1e-3
FLASH_VALUE_RTOL = 2e-2  # padding-free flash vs padded sdpa, bf16 (different kernels, same math)


@dataclass(frozen=True)
class Sizes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    pairs: int
    prompt: tuple[int, int]  # inclusive range of prompt lengths
    completion: tuple[int, int]
    chunk_size: int  # the small chunk size tried besides the default


GPU_SIZES = Sizes(32000, 512, 4, 8, 4, 1376, 8, (32, 384), (16, 256), 256)
DRY_SIZES = Sizes(96, 32, 2, 4, 2, 64, 3, (2, 8), (1, 6), 4)


def tolerances() -> dict:
    return {
        "fp32": f"|Δ value| ≤ {FP32_VALUE_ATOL} + {FP32_VALUE_RTOL}·|plain|; gradients ‖Δ‖/‖plain‖ ≤ {FP32_GRAD_RTOL}",
        "bf16": f"max |fast − fp32| ≤ {BF16_FACTOR}·max |plain − fp32| + {BF16_VALUE_FLOOR} (values, summed "
                f"log-probs); gradients ‖fast − fp32‖/‖fp32‖ ≤ {BF16_FACTOR}·(same for plain) + {BF16_GRAD_FLOOR}",
        "flash": f"padding-free flash vs padded sdpa (bf16): max |Δ|/max(|sdpa|, 1) ≤ {FLASH_VALUE_RTOL}",
    }


# ------------------------------------------------------------------ model and batch


def tiny_llama(sizes: Sizes, seed: int = 0, attn: str = "sdpa"):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                            num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
                            intermediate_size=sizes.intermediate, max_position_embeddings=2048,
                            tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = attn
    return tf.LlamaForCausalLM(config).eval()  # eval: no dropout (none in Llama; explicit all the same)


def make_batch(sizes: Sizes, device, seed: int = 0):
    """B pairs of random lengths, right-padded, through preftune's collator; the last pair's
    completions begin with the same 3 tokens (the shared prefix runs into them)."""
    import torch

    from preftune.data.collate import PreferenceBatch, PreferenceCollator

    g = torch.Generator().manual_seed(seed)

    def length(lo_hi):
        return int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=g))

    def tokens(n):
        return torch.randint(3, sizes.vocab, (n,), generator=g).tolist()

    features = []
    for i in range(sizes.pairs):
        common = tokens(3) if i == sizes.pairs - 1 else []
        chosen = common + tokens(length(sizes.completion))
        rejected = common + tokens(length(sizes.completion))
        if len(chosen) > len(common) and len(rejected) > len(common) and chosen[len(common)] == rejected[len(common)]:
            rejected[len(common)] = 3 + (rejected[len(common)] - 2) % (sizes.vocab - 3)
        features.append(dict(prompt_ids=tokens(length(sizes.prompt)), chosen_ids=chosen, rejected_ids=rejected))
    inputs = PreferenceCollator(pad_token_id=0)(features)
    return PreferenceBatch.from_inputs({k: v.to(device) for k, v in inputs.items() if hasattr(v, "to")})


def make_list_batch(sizes: Sizes, device, answers: int = 4, seed: int = 1):
    """`sizes.pairs` prompts with `answers` scored answers each (list rows, issue 17), through ListCollator."""
    import torch

    from preftune.data.collate import ListBatch, ListCollator

    g = torch.Generator().manual_seed(seed)

    def tokens(lo_hi):
        n = int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=g))
        return torch.randint(3, sizes.vocab, (n,), generator=g).tolist()

    features = [dict(prompt_ids=tokens(sizes.prompt), completion_ids=[tokens(sizes.completion) for _ in range(answers)],
                     scores=[float(answers - k) for k in range(answers)]) for _ in range(sizes.pairs)]
    inputs = ListCollator(pad_token_id=0)(features)
    return ListBatch.from_inputs({k: v.to(device) for k, v in inputs.items()})


def _request(batch):
    import torch

    from preftune.logps import LogpsRequest

    groups = getattr(batch, "groups", None)
    if groups is not None:  # list rows: the first answer of each prompt (ORPO's best answer)
        first = torch.ones_like(groups, dtype=torch.bool)
        first[1:] = groups[1:] != groups[:-1]
        return LogpsRequest(sequence_rows=first)
    b = batch.batch_size
    return LogpsRequest(sequence_rows=torch.arange(2 * b, device=batch.input_ids.device) < b)  # ORPO's NLL rows


def _paths(sizes: Sizes) -> dict:
    """name -> fn(model, batch, request): the plain computation and the fast paths compared with it."""
    from preftune.logps import LogpsOptions, plain_sequence_logps
    from preftune.logps.causal import chunked_sequence_logps
    from preftune.logps.prefix import shared_prefix_logps

    def plain(m, b, r):
        return plain_sequence_logps(m, b.input_ids, b.attention_mask, b.completion_mask, r)

    def chunked(**kw):
        return lambda m, b, r: chunked_sequence_logps(m, b.input_ids, b.attention_mask, b.completion_mask, r,
                                                      options=LogpsOptions(**kw))

    return {
        "plain": plain,
        "chunked (closed-form head backward)": chunked(),
        "chunked (checkpointed chunks)": chunked(fused_head=False),
        f"chunked (chunk size {sizes.chunk_size})": chunked(chunk_size=sizes.chunk_size),
        "prefix-shared": lambda m, b, r: shared_prefix_logps(m, b, r, options=LogpsOptions()),
        "prefix-shared, padding-free": lambda m, b, r: shared_prefix_logps(m, b, r,
                                                                           options=LogpsOptions(padding_free=True)),
    }


def _evaluate(fn, model, batch, request, autocast_dtype):
    """(values (2, 2B) fp32: completion and sequence log-probs; {param: fp32 grad}) of one forward + backward."""
    import contextlib

    import torch

    model.zero_grad(set_to_none=True)
    device = batch.input_ids.device.type
    ctx = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        out = fn(model, batch, request)
    n = batch.completion_mask.sum().clamp(min=1)
    loss = (0.7 * out.completion_logps.sum() + 0.3 * out.sequence_logps.sum()) / n
    loss.backward()
    values = torch.stack([out.completion_logps, out.sequence_logps]).detach().float()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return values, grads


def _diff(values, grads, ref_values, ref_grads) -> dict:
    import torch

    dv = (values - ref_values).abs()
    num = sum(float((grads[k] - ref_grads[k]).pow(2).sum()) for k in ref_grads) ** 0.5
    den = sum(float(ref_grads[k].pow(2).sum()) for k in ref_grads) ** 0.5
    worst = max(ref_grads, key=lambda k: float((grads[k] - ref_grads[k]).norm() / ref_grads[k].norm().clamp(min=1e-30)))
    return {
        "value_max_abs": float(dv.max()),
        "value_max_rel": float((dv / ref_values.abs().clamp(min=1.0)).max()),
        "grad_rel_norm": num / max(den, 1e-30),
        "grad_max_abs": max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads),
        "grad_worst_tensor": worst,
        "grad_worst_tensor_rel": float((grads[worst] - ref_grads[worst]).norm() / ref_grads[worst].norm().clamp(min=1e-30)),
        "same_grad_keys": sorted(grads) == sorted(ref_grads),
        "finite": bool(torch.isfinite(values).all()) and all(bool(torch.isfinite(g).all()) for g in grads.values()),
    }


def bf16_exactness(ctx) -> dict:
    import torch

    from preftune.logps import choose_logps_path

    sizes = ctx.sizes
    device = ctx.device
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 means fp32 (no TF32) for the reference
    try:
        model = tiny_llama(sizes).to(device)
        batch = make_batch(sizes, device)
        request = _request(batch)
        paths = _paths(sizes)
        result = {"tolerances": tolerances(), "path": choose_logps_path(model).description,
                  "batch": {"pairs": batch.batch_size, "row_length": batch.input_ids.shape[1],
                            "completion_tokens": int(batch.completion_mask.sum())},
                  "cases": {}}
        # fp32: the reference, and each fast path against plain at rounding level.
        ref = {name: _evaluate(fn, model, batch, request, None) for name, fn in paths.items()}
        ref_v, ref_g = ref["plain"]
        fp32 = {}
        for name, (v, g) in ref.items():
            if name == "plain":
                continue
            d = _diff(v, g, ref_v, ref_g)
            d["pass"] = bool(d["finite"] and d["same_grad_keys"]
                             and (v - ref_v).abs().le(FP32_VALUE_ATOL + FP32_VALUE_RTOL * ref_v.abs()).all()
                             and d["grad_rel_norm"] <= FP32_GRAD_RTOL)
            fp32[name] = d
        result["cases"]["fp32"] = fp32
        # bf16 autocast, fp32 weights: the fp32 plain run above is the reference.
        result["cases"]["bf16 autocast, fp32 weights"] = _bf16_case(model, batch, request, paths, ref_v, ref_g)
        # List rows (4 answers per prompt, one packed row per prompt): fp32 and bf16 autocast against plain.
        lists = make_list_batch(sizes, device)
        list_paths = {k: v for k, v in paths.items() if k in ("plain", "prefix-shared", "prefix-shared, padding-free")}
        list_request = _request(lists)
        l_v, l_g = _evaluate(list_paths["plain"], model, lists, list_request, None)
        fp32_lists = {}
        for name in ("prefix-shared", "prefix-shared, padding-free"):
            v, g = _evaluate(list_paths[name], model, lists, list_request, None)
            d = _diff(v, g, l_v, l_g)
            d["pass"] = bool(d["finite"] and d["same_grad_keys"]
                             and (v - l_v).abs().le(FP32_VALUE_ATOL + FP32_VALUE_RTOL * l_v.abs()).all()
                             and d["grad_rel_norm"] <= FP32_GRAD_RTOL)
            fp32_lists[name] = d
        result["cases"]["lists (4 answers), fp32"] = fp32_lists
        result["cases"]["lists (4 answers), bf16 autocast"] = _bf16_case(model, lists, list_request, list_paths,
                                                                          l_v, l_g)
        # bf16 weights: the reference is fp32 with the same (bf16-rounded) weights.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        r_v, r_g = _evaluate(paths["plain"], model, batch, request, None)
        model = model.to(torch.bfloat16)
        result["cases"]["bf16 autocast, bf16 weights"] = _bf16_case(model, batch, request, paths, r_v, r_g)
        result["pass"] = all(d["pass"] for case in result["cases"].values() for d in case.values()
                             if isinstance(d, dict) and "pass" in d)
        return result
    finally:
        torch.set_float32_matmul_precision(previous)


def _bf16_case(model, batch, request, paths, ref_v, ref_g) -> dict:
    import torch

    runs = {name: _evaluate(fn, model, batch, request, torch.bfloat16) for name, fn in paths.items()}
    plain = _diff(*runs["plain"], ref_v, ref_g)
    case = {"plain vs fp32": plain}
    for name, (v, g) in runs.items():
        if name == "plain":
            continue
        d = _diff(v, g, ref_v, ref_g)
        d["vs plain bf16"] = {k: x for k, x in _diff(v, g, *runs["plain"]).items() if k.startswith(("value", "grad_rel"))}
        d["pass"] = bool(d["finite"] and d["same_grad_keys"]
                         and d["value_max_abs"] <= BF16_FACTOR * plain["value_max_abs"] + BF16_VALUE_FLOOR
                         and d["grad_rel_norm"] <= BF16_FACTOR * plain["grad_rel_norm"] + BF16_GRAD_FLOOR)
        case[name] = d
    return case


# ------------------------------------------------------------------ part b: flash attention


def _version(name: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def flash_availability(device: str) -> dict:
    import transformers.utils as tu

    found = {
        "flash_attn package": _version("flash-attn") or _version("flash_attn"),
        "flash_attention_2 (transformers)": bool(getattr(tu, "is_flash_attn_2_available", lambda: False)()),
        "flash_attention_3 (transformers)": bool(getattr(tu, "is_flash_attn_3_available", lambda: False)()),
        "kernels package": _version("kernels"),
        "kernels note": "Hub kernels (attn_implementation='kernels-community/...') are downloaded at load time; "
                        "not tried on a machine without network",
    }
    found["sdpa flash kernel"] = _probe_sdpa_flash(device)
    return found


def _probe_sdpa_flash(device: str) -> dict:
    """Whether torch's sdpa runs its flash kernel: a causal call (what a plain batch gets) and a call
    with a boolean mask (what prefix sharing passes), each with only the flash backend allowed."""
    import torch

    if device != "cuda":
        return {"applicable": False, "why": "sdpa's flash kernel is CUDA-only"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 8, 256, 64, device="cuda", dtype=torch.bfloat16)
    out = {"enabled": torch.backends.cuda.flash_sdp_enabled()}
    for label, kwargs in (("causal", {"is_causal": True}),
                          ("custom mask", {"attn_mask": torch.ones(256, 256, device="cuda", dtype=torch.bool).tril()})):
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, **kwargs)
            torch.cuda.synchronize()
            out[label] = "runs"
        except Exception as err:  # expected for the custom mask
            out[label] = f"refused: {type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
    return out


def _flash_impl(available: dict) -> str | None:
    if available["flash_attention_2 (transformers)"]:
        return "flash_attention_2"
    if available["flash_attention_3 (transformers)"]:
        return "flash_attention_3"
    return None


def flash_attention(ctx) -> dict:
    import torch

    from preftune.logps import LogpsOptions, choose_logps_path

    available = flash_availability(ctx.device)
    result = {"available": available, "tolerances": {"flash": tolerances()["flash"]}, "paths": {}}
    model = tiny_llama(DRY_SIZES)  # what the dispatcher says depends on the config, not the sizes
    for impl in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
        model.config._attn_implementation = impl  # set directly: describes the path without loading a kernel
        result["paths"][impl] = {
            "default": choose_logps_path(model).description,
            "padding_free": choose_logps_path(model, LogpsOptions(padding_free=True)).description,
        }
    impl = _flash_impl(available)
    run_impl = impl or "sdpa"  # without flash-attn the same checks run with sdpa: still the padding-free path
    why = "dry run" if ctx.dry_run else "flash-attn 2/3 not installed"
    result["ran_with"] = run_impl + ("" if impl else f" ({why}: sdpa stands in for flash attention)")
    dtype = torch.bfloat16 if ctx.device == "cuda" else torch.float32
    sizes = ctx.sizes
    flash = tiny_llama(sizes, attn=run_impl).to(ctx.device, dtype)
    sdpa = tiny_llama(sizes, attn="sdpa").to(ctx.device, dtype)
    sdpa.load_state_dict(flash.state_dict())
    batch = make_batch(sizes, ctx.device)
    request = _request(batch)
    with torch.no_grad():
        path = choose_logps_path(flash, LogpsOptions(padding_free=True))
        got = path(flash, batch, request).completion_logps.float()
        want = choose_logps_path(sdpa, LogpsOptions(prefix_sharing=False))(sdpa, batch, request).completion_logps.float()
    rel = float(((got - want).abs() / want.abs().clamp(min=1.0)).max())
    result["padding_free_vs_padded_sdpa"] = {"path": path.description, "value_max_abs": float((got - want).abs().max()),
                                              "value_max_rel": rel, "pass": rel <= FLASH_VALUE_RTOL}
    methods = ("orpo", "dpo") if not ctx.dry_run else ("orpo",)  # a dry run checks the control flow once
    result["trainer_steps"] = {m: trainer_step(ctx, m, run_impl) for m in methods}
    result["pass"] = result["padding_free_vs_padded_sdpa"]["pass"] and all(
        s.get("finite_loss", False) for s in result["trainer_steps"].values())
    return result


def trainer_step(ctx, method: str, attn: str) -> dict:
    """One optimizer step of `method` on the bundled tiny model and data, with `attn` and padding_free."""
    import json
    import math

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import preftune
    from preftune.assets import tiny_dataset_files, tiny_model_path

    datasets.disable_progress_bars()
    cuda = ctx.device == "cuda"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=attn)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    with open(tiny_dataset_files()["train"]) as f:
        rows = [json.loads(line) for _, line in zip(range(8), f)]
    config_cls, trainer_cls = ((preftune.ORPOConfig, preftune.ORPOTrainer) if method == "orpo"
                               else (preftune.DPOConfig, preftune.DPOTrainer))
    args = config_cls(output_dir=str(ctx.work / f"flash-{method}"), max_steps=1, per_device_train_batch_size=4,
                      learning_rate=1e-5, bf16=cuda, padding_free=True, report_to="none", save_strategy="no",
                      logging_strategy="no", disable_tqdm=True, use_cpu=not cuda)
    trainer = trainer_cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer)
    t0 = time.perf_counter()
    out = trainer.train()
    return {"path": trainer.logps_path.description, "loss": out.training_loss,
            "finite_loss": math.isfinite(out.training_loss), "step_s": time.perf_counter() - t0,
            "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None}
