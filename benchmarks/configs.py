"""Benchmark configurations: model shape, data shape, batch, steps, precision.

Every number that decides what is measured lives here, so the preftune and TRL
runs of one configuration are the same model, the same data, the same batch, the
same steps and the same precision.

Lengths are drawn per pair from a log-normal with the given *mean* and sigma (a
long right tail, as in real preference sets such as UltraFeedback), then clipped;
chosen and rejected lengths are drawn independently. The clips keep
``1 + prompt + completion + 1`` (BOS, EOS) under ``max_length``, so no
implementation truncates anything and both see identical token sequences.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LengthDist:
    mean: float  # mean of the log-normal before clipping
    sigma: float  # sigma of log(length)
    low: int
    high: int


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    # Llama-style model (random init, fixed seed)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    # data
    prompt: LengthDist
    completion: LengthDist
    max_length: int
    # training
    batch_size: int  # pairs per step (the model sees 2x this many sequences)
    steps: int  # default number of optimizer steps
    warmup_steps: int  # first steps left out of the timing
    precision: str  # "fp32" or "bf16" (bf16: weights loaded in bf16 and bf16=True, as TRL's scripts do)
    device: str  # "cpu" or "cuda": where the configuration is meant to run
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(
            name="micro",
            description="~1M parameters, 1k vocabulary, short sequences: a smoke test, not a measurement",
            vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            prompt=LengthDist(24, 0.5, 4, 64), completion=LengthDist(32, 0.5, 2, 64), max_length=256,
            batch_size=2, steps=3, warmup_steps=1, precision="fp32", device="cpu",
        ),
        BenchConfig(
            name="small",
            description="~20M parameters, 32k vocabulary, prompts ~150 and answers ~200 tokens, batch 4, fp32 (2-core CPU)",
            vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
            prompt=LengthDist(150, 0.6, 16, 400), completion=LengthDist(200, 0.6, 8, 500), max_length=1024,
            batch_size=4, steps=10, warmup_steps=2, precision="fp32", device="cpu",
        ),
        BenchConfig(
            name="skewed",
            description="the small model; lengths spread wide (log-normal sigma 1.0: most rows short, a few long), "
                        "batch 8, fp32 (2-core CPU): for padding_free",
            vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
            prompt=LengthDist(60, 1.0, 4, 600), completion=LengthDist(80, 1.0, 2, 700), max_length=1400,
            batch_size=8, steps=6, warmup_steps=1, precision="fp32", device="cpu",
        ),
        BenchConfig(
            name="gpu-0.5b",
            description="~0.5B parameters (Qwen2.5-0.5B shape, tied), 128k vocabulary, ~1.1k-token sequences (up to 2k), batch 4, bf16",
            vocab_size=128256, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
            prompt=LengthDist(512, 0.5, 64, 1000), completion=LengthDist(640, 0.5, 32, 1000), max_length=2048,
            batch_size=4, steps=20, warmup_steps=3, precision="bf16", device="cuda",
        ),
        BenchConfig(
            name="gpu-1b",
            description="~1.2B parameters (Llama-3.2-1B shape, tied), 128k vocabulary, ~1.1k-token sequences (up to 2k), batch 4, bf16",
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
            prompt=LengthDist(512, 0.5, 64, 1000), completion=LengthDist(640, 0.5, 32, 1000), max_length=2048,
            batch_size=4, steps=20, warmup_steps=3, precision="bf16", device="cuda",
        ),
    )
}

# Special token ids of the benchmark tokenizer; words are ids N_SPECIAL .. vocab_size-1.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
N_SPECIAL = 4


# Methods the benchmark trains (benchmarks/worker.py maps each to preftune's and TRL's classes).
METHODS = ("orpo", "dpo", "cpo", "simpo", "kto")
