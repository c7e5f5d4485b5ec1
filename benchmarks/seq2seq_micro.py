"""Encoder-decoder log-probs, chunked LM head vs the model's own full logits.

One forward + backward of `preftune.logps.seq2seq.encoder_decoder_logps` on a random-init
T5 or BART of the `small` benchmark's size (32k vocabulary, d_model 256, 4+4 layers),
4 pairs with ~150-token prompts and ~200-token answers (log-normal, as run.py's data),
fp32, each option in a fresh subprocess: best and median seconds over the repeats and
the peak RSS the repeats added over the RSS after a warm-up call.

    python benchmarks/seq2seq_micro.py --arch t5 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from assets import sample_lengths  # noqa: E402
from configs import CONFIGS  # noqa: E402
from worker import peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402

VARIANTS = {"chunked": {}, "checkpointed": {"fused_head": False}, "plain": {"chunked": False}}


def build(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    v, d = 32000, 256
    if arch == "t5":
        cfg = tf.T5Config(vocab_size=v, d_model=d, d_kv=64, d_ff=688, num_layers=4, num_heads=4,
                          pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, tie_word_embeddings=False)
        return tf.T5ForConditionalGeneration(cfg).eval()
    cfg = tf.BartConfig(vocab_size=v, d_model=d, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=688, decoder_ffn_dim=688, max_position_embeddings=1024,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    return tf.BartForConditionalGeneration(cfg).eval()


def make_batch(seed=0):
    from preftune.data.collate import Seq2SeqBatch

    cfg = CONFIGS["small"]
    rng = np.random.default_rng(seed)
    b = cfg.batch_size
    p = sample_lengths(cfg.prompt, b, rng) + 1
    answers = list(sample_lengths(cfg.completion, b, rng) + 1) + list(sample_lengths(cfg.completion, b, rng) + 1)
    prompt = torch.zeros(b, int(p.max()), dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt)
    for i, n in enumerate(p):
        prompt[i, :n] = torch.as_tensor(rng.integers(4, cfg.vocab_size, n))
        prompt_mask[i, :n] = 1
    comp = torch.zeros(2 * b, int(max(answers)), dtype=torch.long)
    comp_mask = torch.zeros_like(comp)
    for i, n in enumerate(answers):
        comp[i, :n] = torch.as_tensor(rng.integers(4, cfg.vocab_size, n))
        comp_mask[i, :n] = 1
    return Seq2SeqBatch(prompt, prompt_mask, comp, comp_mask, None)


def one(arch: str, name: str, repeats: int) -> dict:
    from preftune.logps import LogpsOptions, LogpsRequest
    from preftune.logps.seq2seq import encoder_decoder_logps

    model, batch = build(arch), make_batch()
    options = LogpsOptions(**VARIANTS[name])

    def step():
        model.zero_grad(set_to_none=True)
        out = encoder_decoder_logps(model, batch, LogpsRequest(sequence_rows=torch.arange(8) < 4), options=options)
        (out.completion_logps.sum() + out.sequence_logps.sum()).backward()

    step()  # warm-up
    model.zero_grad(set_to_none=True)
    base = rss_mib()
    reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"name": name, "times": times, "added_peak_mib": peak_rss_mib() - base,
            "scored_tokens": int(batch.completion_mask.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="t5", choices=["t5", "bart"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.arch, args.one, args.repeats)))
        return 0
    print("| variant | best s | median s | added peak RSS MiB |\n|---|---|---|---|")
    for name in args.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--repeats", str(args.repeats),
                               "--one", name], capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            print(f"| {name} | n/a: {(proc.stderr.strip().splitlines() or ['failed'])[-1]} | | |")
            continue
        r = json.loads(lines[-1])
        print(f"| {name} | {min(r['times']):.3f} | {statistics.median(r['times']):.3f} | {r['added_peak_mib']:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
