"""Micro-benchmark of the log-prob head alone: hidden states -> per-row summed log-probs -> backward.

Isolates the part of a preference step that depends on the vocabulary (the LM head, the
log-softmax and its backward) from the transformer body, on the shapes of a benchmark
configuration, for:

- ``preftune-chunked``: `preftune.logps.causal.sequence_logps` (chunks of the head; a plain linear head
  is back-propagated by `preftune.logps.head.LinearHeadLogps`); ``preftune-chunked:N`` with
  ``logps_chunk_size=N`` tokens per chunk;
- ``preftune-checkpointed[:N]``: the same with ``logps_fused_head=False`` (each chunk checkpointed,
  autograd's backward);
- ``preftune-plain``:   `preftune.logps.causal.plain_sequence_logps` (full [rows, seq, vocab] logits);
- ``trl-fused``:        TRL's `ChunkedLogProbFunction` (a hand-written backward that turns each
                        recomputed tile into its gradient in place), when TRL is installed —
                        on the same scored tokens only, for a like-for-like comparison of the head.

The "model" is a stand-in whose hidden states are a parameter, so only the head is timed.
Each variant runs in a fresh subprocess: one warm-up call, then the repeats; the best and median
times and the peak RSS the repeats added over the RSS after the warm-up (Linux high-water mark)
are printed. With ``--rounds R`` every variant's subprocess runs R times, round-robin (so a
neighbour's load falls on all variants alike), and the table gives the median of the R
per-round medians, the best time and the largest added peak.

    python benchmarks/logps_micro.py --config small --repeats 3
    python benchmarks/logps_micro.py --config small --threads 1 --rounds 3 \
        --variants preftune-chunked,preftune-chunked:2048          # interleaved A/B, one thread
    python benchmarks/logps_micro.py --config small --vocab-size 128256 --hidden-size 896 \
        --variants preftune-chunked:128,preftune-chunked:512      # chunk sizes at another shape
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from assets import sample_lengths  # noqa: E402
from configs import CONFIGS  # noqa: E402
from worker import peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402


class HeadOnly(torch.nn.Module):
    """Hidden states as a parameter + an LM head, with the forward signature sequence_logps expects."""

    def __init__(self, rows: int, seq: int, hidden: int, vocab: int):
        super().__init__()
        self.hidden = torch.nn.Parameter(torch.randn(rows, seq, hidden) / hidden**0.5)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        self.config = SimpleNamespace(vocab_size=vocab, final_logit_softcapping=None)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, use_cache=False, output_hidden_states=False,
                logits_to_keep=0):
        if output_hidden_states:
            return SimpleNamespace(hidden_states=(self.hidden,), logits=None)
        return SimpleNamespace(logits=self.lm_head(self.hidden), hidden_states=None)


def make_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b = cfg.batch_size
    p = sample_lengths(cfg.prompt, b, rng)
    c = sample_lengths(cfg.completion, b, rng)
    r = sample_lengths(cfg.completion, b, rng)
    lens = [(int(p[i]) + 1, int(x[i]) + 1) for x in (c, r) for i in range(b)]  # (BOS+prompt, completion+EOS)
    width = max(a + z for a, z in lens)
    ids = torch.tensor(rng.integers(4, cfg.vocab_size, (2 * b, width)))
    attn = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for row, (a, z) in enumerate(lens):
        attn[row, : a + z] = 1
        comp[row, a : a + z] = 1
    return ids, attn, comp


def run_variant(name, model, ids, attn, comp, rows, wpo=False):
    from preftune.logps import LogpsOptions, LogpsRequest, plain_sequence_logps, sequence_logps

    model.zero_grad(set_to_none=True)
    request = LogpsRequest(sequence_rows=rows, wpo=wpo)
    if name.startswith(("preftune-chunked", "preftune-checkpointed")):  # ":N" sets logps_chunk_size=N
        size = int(name.split(":")[1]) if ":" in name else None
        options = LogpsOptions(chunk_size=size, fused_head=name.startswith("preftune-chunked"))
        out = sequence_logps(model, ids, attn, comp, request, options=options)
        loss = out.completion_logps.sum() + out.sequence_logps.sum()
    elif name == "preftune-plain":
        out = plain_sequence_logps(model, ids, attn, comp, request)
        loss = out.completion_logps.sum() + out.sequence_logps.sum()
    else:  # trl-fused: the same scored positions through TRL's fused function
        from trl.kernels import ChunkedLogProbFunction

        scored = comp[:, 1:].bool() | (attn[:, 1:].bool() & rows[:, None])
        h = model.hidden[:, :-1][scored]
        y = ids[:, 1:][scored]
        logp, *_ = ChunkedLogProbFunction.apply(h, model.lm_head.weight, None, y, 1.0, 32768, None, 1.0,
                                                ("log_probs", "mean_logits"))
        loss = logp.sum()
    loss.backward()


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc), so the baseline RSS is what is really in use."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--method", default="orpo", choices=["orpo", "dpo"],
                    help="orpo also scores every token of the chosen rows (the NLL term)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="run every variant's subprocess this many times, round-robin")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--vocab-size", type=int, default=None, help="override the config's vocabulary")
    ap.add_argument("--hidden-size", type=int, default=None, help="override the config's hidden size")
    ap.add_argument("--wpo", action="store_true", help="also compute WPO's statistics (preftune variants)")
    ap.add_argument("--frozen-head", action="store_true",
                    help="the LM head needs no gradient (as with LoRA); only the hidden states get one")
    ap.add_argument("--variants", default="preftune-chunked,preftune-plain,trl-fused")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant here
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config]
    overrides = {k: v for k, v in (("vocab_size", args.vocab_size), ("hidden_size", args.hidden_size)) if v}
    cfg = dataclasses.replace(cfg, **overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids, attn, comp = make_batch(cfg)
    n = ids.shape[0]
    rows = torch.arange(n) < n // 2 if args.method == "orpo" else torch.zeros(n, dtype=torch.bool)
    scored = int((comp[:, 1:].bool() | (attn[:, 1:].bool() & rows[:, None])).sum())
    model = HeadOnly(n, ids.shape[1], cfg.hidden_size, cfg.vocab_size)
    model.lm_head.requires_grad_(not args.frozen_head)
    if args.one:
        name = args.one
        if name == "trl-fused":
            try:
                import trl.kernels  # noqa: F401
            except ImportError:
                print(json.dumps({"name": name, "error": "trl not installed"}))
                return
        run_variant(name, model, ids, attn, comp, rows, args.wpo)  # warm-up: lazy library loads, allocator pools
        model.zero_grad(set_to_none=True)
        _trim()
        times = []
        base = rss_mib()
        reset_peak_rss()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run_variant(name, model, ids, attn, comp, rows, args.wpo)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"name": name, "times": times, "added_peak_mib": peak_rss_mib() - base}))
        return
    from preftune.logps.causal import chunk_tokens

    default_chunk = chunk_tokens(cfg.vocab_size, cfg.hidden_size, "cpu")
    print(f"{cfg.name}/{args.method}: rows {n}, width {ids.shape[1]}, real tokens {int(attn.sum())}, "
          f"scored tokens {scored}, vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, "
          f"threads {args.threads or torch.get_num_threads()}, wpo {args.wpo}, frozen head {args.frozen_head}, "
          f"default chunk {default_chunk} tokens ({default_chunk * cfg.vocab_size * 4 / 2**20:.1f} MiB fp32); "
          f"{args.repeats} repeats x {args.rounds} rounds")
    names = [v for v in args.variants.split(",") if v]
    results: dict[str, list[dict]] = {name: [] for name in names}
    cmd = [sys.executable, __file__, "--config", args.config, "--method", args.method, "--repeats", str(args.repeats)]
    for flag, value in (("--threads", args.threads), ("--vocab-size", args.vocab_size),
                        ("--hidden-size", args.hidden_size)):
        if value:
            cmd += [flag, str(value)]
    cmd += ["--wpo"] if args.wpo else []
    cmd += ["--frozen-head"] if args.frozen_head else []
    for _ in range(max(1, args.rounds)):
        for name in names:
            proc = subprocess.run(cmd + ["--one", name], check=False, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            results[name].append(json.loads(lines[-1]) if lines else
                                 {"name": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
    print("| variant | best s | median s | added peak RSS MiB |\n|---|---|---|---|")
    for name, runs in results.items():
        ok = [r for r in runs if "times" in r]
        if not ok:
            print(f"| {name} | n/a: {runs[-1].get('error')} | | |")
            continue
        best = min(min(r["times"]) for r in ok)
        median = statistics.median(statistics.median(r["times"]) for r in ok)
        peak = max(r["added_peak_mib"] for r in ok)
        print(f"| {name} | {best:.3f} | {median:.3f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
