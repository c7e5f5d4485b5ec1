"""One benchmark run, (implementation, method), in a process of its own.

`run.py` starts this script once per row of the table so that peak memory is the
peak of that run alone. It loads the fixed model, tokenizer and pairs written by
`assets.py`, builds the implementation's own config and trainer with the same
settings, and calls ``trainer.train()`` for ``max_steps`` steps (no evaluation,
no saving, logging off, sequential sampling). A `TrainerCallback` times each step
(``on_step_begin`` -> ``on_step_end``, after a device synchronise), the data
collator is wrapped to count tokens from the batches the trainer really used, and a
hook on the input-embedding lookups counts the positions every forward computes.
The result (or the reason it could not run) is written as JSON.

With ``--data lists`` it trains on the list rows of ``lists.jsonl`` (``run.py --lists K``),
``--list_pairs all``; tokens are then counted as the pairs those rows stand for (see
`batch_counts`), so a list run and the run of its expanded pairs count the same tokens.

    python benchmarks/worker.py --assets DIR --config small --impl preftune --method orpo --result out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from configs import CONFIGS, METHODS, BenchConfig  # noqa: E402


# ------------------------------------------------------------------ memory


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib / 1024 if sys.platform == "darwin" else kib
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0), so the training peak can be read alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ counting


class CountingCollator:
    """Wraps a trainer's data collator and records, per batch: the tokens of the chosen and
    rejected sequences (the prompt counts once in each: the "tokens" of tokens/s), the real
    (non-padding) positions of the batch as (2B, T) rows, and as B packed rows whose
    chosen and rejected share their common prefix (preftune's prefix sharing)."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[dict] = []

    def __call__(self, features, *args, **kwargs):
        batch = self.inner(features, *args, **kwargs)
        self.batches.append(list_counts(features) if features and "scores" in features[0] else batch_counts(features))
        return batch

    def __getattr__(self, name):  # the trainer may read attributes of its collator
        return getattr(self.inner, name)


def _rows(x) -> tuple[list, list]:
    """The two sequences of a feature (KTO: the row and its mismatched KL row)."""
    if "label" in x and "chosen_ids" in x:  # preftune's KTO: chosen_ids is the completion, rejected_ids the KL one
        p = list(x["prompt_ids"])
        return p + list(x["chosen_ids"]), p + list(x["rejected_ids"])
    if "completion_ids" in x:  # TRL's KTOTrainer: prompt_ids, completion_ids, KL_completion_ids
        p = list(x["prompt_ids"])
        return p + list(x["completion_ids"]), p + list(x.get("KL_completion_ids", []))
    if "chosen_ids" in x:  # preftune and TRL's DPOTrainer: prompt_ids, chosen_ids, rejected_ids
        p = list(x["prompt_ids"])
        return p + list(x["chosen_ids"]), p + list(x["rejected_ids"])
    if "chosen_input_ids" in x:  # TRL's ORPOTrainer: prompt + completion per side
        return list(x["chosen_input_ids"]), list(x["rejected_input_ids"])
    raise ValueError(f"unknown feature layout: {sorted(x)}")


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for u, v in zip(a, b):
        if u != v:
            break
        n += 1
    return n


def batch_counts(features) -> dict:
    pairs = len(features)
    tokens = real_shared = 0
    for x in features:
        chosen, rejected = _rows(x)
        tokens += len(chosen) + len(rejected)
        real_shared += len(chosen) + len(rejected) - _common_prefix(chosen, rejected)
    return {"pairs": pairs, "tokens": tokens, "real_plain": tokens, "real_shared": real_shared}


def list_counts(features) -> dict:
    """Counts for list rows (prompt_ids, completion_ids: K answers, scores), in pair-equivalent terms.

    tokens: Σ over every two answers with different scores (the pairs ``expand_lists`` makes) of
    (prompt + better) + (prompt + worse) — what those pairs count in `batch_counts`, whatever the run
    trains on; real_plain: Σ K·prompt + Σ answers (each answer its own row, ``plain_rows`` = N rows);
    real_shared: the same with each prompt's common prefix once (one packed row per prompt)."""
    pairs = tokens = real_plain = real_shared = plain_rows = 0
    for x in features:
        p = list(x["prompt_ids"])
        rows = [p + list(a) for a in x["completion_ids"]]
        scores = list(x["scores"])
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                if scores[i] != scores[j]:
                    pairs += 1
                    tokens += len(rows[i]) + len(rows[j])
        shared = min(_common_prefix(rows[0], r) for r in rows[1:]) if len(rows) > 1 else 0
        real_plain += sum(len(r) for r in rows)
        real_shared += sum(len(r) for r in rows) - (len(rows) - 1) * shared
        plain_rows += len(rows)
    return {"pairs": pairs, "tokens": tokens, "real_plain": real_plain, "real_shared": real_shared,
            "packed_rows": len(features), "plain_rows": plain_rows}


class PositionCounter:
    """Counts the positions every model forward computes, from the input-embedding lookups
    (policy and reference alike), and how many of them are real tokens: a (2B, T) forward
    computes the batch's chosen and rejected rows; a (B, L) forward, B pairs packed one per
    row, computes each shared prefix once; a (1, R) forward is the whole batch packed into one
    row without padding (padding_free). List rows (`list_counts`): (N, T) plain, (G, L) one
    packed row per prompt."""

    def __init__(self, batches: list[dict]):
        self.batches = batches
        self.step = 0  # index of the step in progress (set by the step timer)
        self.computed: dict[int, int] = {}
        self.real: dict[int, int] = {}
        self.forwards: dict[int, int] = {}
        self.unknown = 0
        self._handle = None

    def __enter__(self):
        import torch

        def hook(module, inputs):
            if not isinstance(module, torch.nn.Embedding) or not inputs or not torch.is_tensor(inputs[0]):
                return
            ids = inputs[0]
            if ids.dtype != torch.long or ids.dim() != 2 or self.step >= len(self.batches):
                return
            b = self.batches[self.step]
            if ids.shape[0] == b.get("plain_rows", 2 * b["pairs"]):
                real = b["real_plain"]
            elif ids.shape[0] == b.get("packed_rows", b["pairs"]):
                real = b["real_shared"]
            elif ids.shape[0] == 1:  # padding_free: the batch as one packed row, every position a real token
                real = ids.numel()
            else:
                self.unknown += 1
                return
            self.computed[self.step] = self.computed.get(self.step, 0) + ids.numel()
            self.real[self.step] = self.real.get(self.step, 0) + real
            self.forwards[self.step] = self.forwards.get(self.step, 0) + 1

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


# ------------------------------------------------------------------ trainers


def common_settings(cfg: BenchConfig, steps: int, output_dir: str, gradient_checkpointing: bool,
                    batch_size: int | None = None) -> dict:
    """TrainingArguments shared by both implementations (each has its own defaults; these override them)."""
    return dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size or cfg.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=1e-6,
        beta=0.1,
        max_length=cfg.max_length,
        bf16=cfg.precision == "bf16",
        fp16=False,
        gradient_checkpointing=gradient_checkpointing,  # TRL's default is True, preftune's False: set both
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # same batches, in the same order, for every implementation
        seed=cfg.seed,
    )


def _parse_config(cls, settings: dict, flags: str):
    """Build a config from the shared settings, then the user's flags, through HfArgumentParser (CLI semantics)."""
    from transformers import HfArgumentParser

    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    argv += shlex.split(flags or "")
    (config,) = HfArgumentParser(cls).parse_args_into_dataclasses(args=argv)
    return config


def lora_config(rank: int):
    """The LoRA adapter both implementations get with --lora R: every linear layer of the body, alpha 2R."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def build_trainer(impl: str, method: str, model, tokenizer, dataset, settings: dict, flags: str, lora: int = 0):
    if impl == "preftune":
        import preftune

        config_cls, trainer_cls = (getattr(preftune, n) for n in PREFTUNE_CLASSES[method])
    elif impl == "trl":
        config_cls, trainer_cls = trl_classes(method)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    settings = {**settings, **METHOD_SETTINGS.get(method, {})}
    config = _parse_config(config_cls, settings, flags)
    extra = {"peft_config": lora_config(lora)} if lora else {}
    return trainer_cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, **extra)


# method -> preftune's (config, trainer) names; simpo is CPO with SimPO's loss and settings.
PREFTUNE_CLASSES = {"orpo": ("ORPOConfig", "ORPOTrainer"), "dpo": ("DPOConfig", "DPOTrainer"),
                    "cpo": ("CPOConfig", "CPOTrainer"), "simpo": ("CPOConfig", "CPOTrainer"),
                    "kto": ("KTOConfig", "KTOTrainer")}
# Settings a method needs in both implementations: SimPO as ms-swift runs it (β 2, γ 1, no NLL term);
# KTO's sampler must be sequential in both (it is already, for every method).
METHOD_SETTINGS = {"simpo": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0)}


def trl_classes(method: str):
    """TRL's classes for a method: DPO and KTO at the top level, ORPO and CPO under trl.experimental."""
    import trl

    if method == "dpo":
        return trl.DPOConfig, trl.DPOTrainer
    if method == "kto":
        return trl.KTOConfig, trl.KTOTrainer
    if method in ("cpo", "simpo"):
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOConfig, CPOTrainer
    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError:
        from trl import ORPOConfig, ORPOTrainer  # older TRL
    return ORPOConfig, ORPOTrainer


def matmul_params(model) -> int:
    """Parameters that take part in a matrix multiply per token: every nn.Linear, the LM head
    included (tied or not); the input embedding is a lookup and is left out."""
    import torch

    seen, n = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
    return n


# ------------------------------------------------------------------ the run


def run(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from assets import load_rows

    cfg = CONFIGS[args.config]
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config {cfg.name} needs a CUDA GPU")
    cuda = torch.cuda.is_available() and cfg.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    import datasets

    datasets.disable_progress_bars()
    assets = Path(args.assets)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=dtype, attn_implementation="sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = matmul_params(model)
    dataset = datasets.Dataset.from_list(load_rows(assets, args.data))

    flags = args.flags
    if args.data == "lists":
        if args.impl != "preftune":
            raise ValueError("list rows are trained by preftune only")
        flags = f"--list_pairs all {flags}".strip()  # every pair of two answers, as the expanded pair run
    with tempfile.TemporaryDirectory(prefix="preftune-bench-") as out_dir:
        settings = common_settings(cfg, args.steps, out_dir, args.gradient_checkpointing, args.batch_size)
        trainer = build_trainer(args.impl, args.method, model, tokenizer, dataset, settings, flags, args.lora)
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        positions = PositionCounter(counter.batches)

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.begin, self.end, self.cpu_begin, self.cpu_end = [], [], [], []

            def on_step_begin(self, a, state, control, **kw):
                positions.step = state.global_step  # forwards from here on belong to this step's batch
                sync()
                self.begin.append(time.perf_counter())
                self.cpu_begin.append(time.process_time())

            def on_step_end(self, a, state, control, **kw):
                sync()
                self.end.append(time.perf_counter())
                self.cpu_end.append(time.process_time())

        timer = StepTimer()
        trainer.add_callback(timer)

        pre_train_peak = peak_rss_mib()
        rss_before = rss_mib()
        hwm_reset = reset_peak_rss()
        if cuda:
            gpu_before = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        profiler = _profiler() if args.profile else None
        load_before = _loadavg()
        t0 = time.perf_counter()
        with positions:
            if profiler is not None:
                with profiler:
                    output = trainer.train()
                _write_profile(profiler, args.profile)
            else:
                output = trainer.train()
        wall = time.perf_counter() - t0
        load_after = _loadavg()
        train_peak = peak_rss_mib()

    steps = len(timer.end)
    if steps != args.steps:
        raise RuntimeError(f"trained {steps} steps, expected {args.steps}")
    batches = counter.batches[:steps]
    warm = min(args.warmup, steps - 1)
    step_s = [e - b for b, e in zip(timer.begin, timer.end)]
    step_cpu = [e - b for b, e in zip(timer.cpu_begin, timer.cpu_end)]
    loop_s = [timer.end[0] - timer.begin[0]] + [b - a for a, b in zip(timer.end, timer.end[1:])]
    measured = range(warm, steps)
    m_time = sum(step_s[i] for i in measured)
    m_tokens = sum(batches[i]["tokens"] for i in measured)
    computed = sum(positions.computed.values())
    real = sum(positions.real.values())
    if not computed or positions.unknown:
        raise RuntimeError(f"could not count the positions the model computed ({positions.unknown} forwards "
                           "of an unexpected shape)")
    result = {
        "steps": steps,
        "warmup_steps": warm,
        "tokens_per_s": m_tokens / m_time,
        "s_per_step": statistics.median(step_s[i] for i in measured),
        "loop_s_per_step": statistics.median(loop_s[i] for i in measured),  # on_step_end to on_step_end (data included)
        "step_times_s": step_s,
        # CPU seconds of all this process's threads per step: less sensitive than wall time to other
        # processes sharing the cores (but it counts the threads' spin-waiting too).
        "cpu_s_per_step": statistics.median(step_cpu[i] for i in measured),
        "step_cpu_s": step_cpu,
        "loadavg_1min_before_after": [load_before, load_after],
        "tokens_per_step": [b["tokens"] for b in batches],
        "pairs_per_step": [b["pairs"] for b in batches],
        "rows_per_step": [b.get("packed_rows", b["pairs"]) for b in batches],  # pairs, or list rows (prompts)
        # over every forward of every step (policy and, for DPO, reference)
        "padding_fraction": 1 - real / computed,
        "computed_positions": computed,
        "positions_per_token": computed / sum(b["tokens"] for b in batches),
        "forwards_per_step": [positions.forwards.get(i, 0) for i in range(steps)],
        "train_wall_s": wall,
        "params": n_params,
        "matmul_params": n_matmul,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_rss_mib": max(pre_train_peak, train_peak) if hwm_reset else train_peak,
        "rss_before_train_mib": rss_before,
        "train_rss_delta_mib": (train_peak - rss_before) if (hwm_reset and rss_before is not None) else None,
        "train_loss": output.training_loss,  # each implementation's own loss definition (a sanity check only)
        "device": "cuda" if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    # Model FLOPs: 6·N per token for the policy's forward + backward (4·N with LoRA: no weight gradients of the
    # frozen N; the adapter's own FLOPs are left out), 2·N per token for a DPO reference forward.
    flops_per_token = (4 if args.lora else 6) * n_matmul
    flops_per_token += 2 * n_matmul if args.method in ("dpo", "kto") and _uses_reference(trainer) else 0
    result["model_tflops_per_s"] = flops_per_token * result["tokens_per_s"] / 1e12
    if args.peak_tflops:
        result["mfu"] = result["model_tflops_per_s"] / args.peak_tflops
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_before_train_mib"] = gpu_before
        result["gpu_name"] = torch.cuda.get_device_name()
    return result


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _uses_reference(trainer) -> bool:
    """Whether the DPO run does a reference forward each step (not with precomputed log-probs)."""
    args = trainer.args
    return not (getattr(args, "precompute_ref_log_probs", False) or getattr(args, "reference_free", False))


def _profiler():
    import torch

    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                  + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []))


def _write_profile(profiler, path: str) -> None:
    averages = profiler.key_averages()
    with open(path, "w") as f:
        f.write("# by self CPU time\n")
        f.write(averages.table(sort_by="self_cpu_time_total", row_limit=60))
        f.write("\n# by total CPU time (inclusive)\n")
        f.write(averages.table(sort_by="cpu_time_total", row_limit=60))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", required=True)
    p.add_argument("--config", required=True, choices=sorted(CONFIGS))
    p.add_argument("--impl", required=True, choices=["preftune", "trl"])
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--data", default="pairs", choices=["pairs", "lists"],
                   help="train on pairs.jsonl, or on the list rows of lists.jsonl (written by run.py --lists K)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the config's batch_size)")
    p.add_argument("--flags", default="", help="extra config flags for the implementation, e.g. '--logps_chunked false'")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora", type=int, default=0, help="train a LoRA adapter of this rank instead of every weight")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--profile", default=None, help="write a torch.profiler table here (timings then include its overhead)")
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = {"impl": args.impl, "method": args.method, "flags": args.flags, "config": args.config, "data": args.data}
    try:
        result.update(run(args))
    except Exception as err:  # reported as "n/a: reason" in the table
        traceback.print_exc()
        result["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    with open(args.result, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
