"""The fixed inputs of a benchmark: a random-init Llama-style model, a word-level
tokenizer, and synthetic preference pairs, written to a folder and loaded by path
(TRL's DPOTrainer builds its reference model from the policy's path, and every
implementation tokenizes the same text itself).

With ``answers=K`` (``run.py --lists K``) the data are list rows instead: each prompt
with K scored answers (``lists.jsonl``), and the same answers expanded to every pair
of two answers, the better one chosen (``pairs.jsonl``, K(K-1)/2 pairs per prompt, a
prompt's pairs adjacent), so both runs train on the same text.

The tokenizer has one token per vocabulary word (``t4`` .. ``t{V-1}``, split on
whitespace) and adds BOS, so a pair written as words tokenizes to exactly
``BOS + prompt`` and ``completion + EOS`` in preftune and in TRL alike. Completion
texts start with a space, because TRL's DPOTrainer tokenizes ``prompt + chosen`` as
one string. Everything is deterministic in the configuration's seed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from configs import BOS_ID, EOS_ID, N_SPECIAL, PAD_ID, UNK_ID, BenchConfig, LengthDist

_ASSETS_VERSION = "1"  # bump when the files written here change


def assets_key(cfg: BenchConfig, n_pairs: int, answers: int = 0) -> str:
    blob = json.dumps([_ASSETS_VERSION, cfg.to_dict(), n_pairs] + ([answers] if answers else []), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_assets(cfg: BenchConfig, n_pairs: int, root: str | os.PathLike, answers: int = 0) -> Path:
    """Write model/, tokenizer (inside model/) and pairs.jsonl under root/<config>-<key>; reuse it if complete.

    With ``answers=K``: ``n_pairs`` list rows of K answers (lists.jsonl) and their pairs (pairs.jsonl)
    under root/<config>-lists<K>-<key>."""
    name = f"{cfg.name}-lists{answers}" if answers else cfg.name
    out = Path(root) / f"{name}-{assets_key(cfg, n_pairs, answers)}"
    done = out / "DONE"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    _build_tokenizer(cfg).save_pretrained(model_dir)
    _build_model(cfg).save_pretrained(model_dir)
    if answers:
        lists = synthetic_lists(cfg, n_pairs, answers)
        _write_jsonl(out / "lists.jsonl", lists)
        _write_jsonl(out / "pairs.jsonl", expand_lists(lists))
    else:
        _write_jsonl(out / "pairs.jsonl", synthetic_pairs(cfg, n_pairs))
    done.write_text("ok\n")
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _build_tokenizer(cfg: BenchConfig):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
    vocab.update({f"t{i}": i for i in range(N_SPECIAL, cfg.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=cfg.max_length,
    )


def _build_model(cfg: BenchConfig):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=max(2048, cfg.max_length), rope_theta=10000.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    if cfg.precision == "bf16":
        model = model.to(torch.bfloat16)
    return model


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    mu = math.log(dist.mean) - dist.sigma**2 / 2  # so that E[length] = dist.mean before clipping
    return np.clip(np.rint(rng.lognormal(mu, dist.sigma, n)), dist.low, dist.high).astype(int)


def synthetic_pairs(cfg: BenchConfig, n_pairs: int) -> list[dict]:
    """n_pairs rows {"prompt", "chosen", "rejected"} of random vocabulary words."""
    rng = np.random.default_rng(cfg.seed)
    p = sample_lengths(cfg.prompt, n_pairs, rng)
    c = sample_lengths(cfg.completion, n_pairs, rng)
    r = sample_lengths(cfg.completion, n_pairs, rng)
    assert (p + np.maximum(c, r) + 2 <= cfg.max_length).all(), "lengths must fit max_length (no truncation)"

    def words(n: int) -> str:
        return " ".join(f"t{i}" for i in rng.integers(N_SPECIAL, cfg.vocab_size, n))

    return [{"prompt": words(p[i]), "chosen": " " + words(c[i]), "rejected": " " + words(r[i])} for i in range(n_pairs)]


def synthetic_lists(cfg: BenchConfig, n_prompts: int, answers: int) -> list[dict]:
    """n_prompts rows {"prompt", "completions" (K answers), "scores" (K distinct numbers)} of random words.

    The generator, seed and length distributions are those of `synthetic_pairs`: prompt lengths from
    ``cfg.prompt``, each answer's length drawn from ``cfg.completion``; the scores are a random order of
    K-1, ..., 0 (no ties, so every two answers make a pair)."""
    if answers < 2:
        raise ValueError(f"a list row needs at least 2 answers, got {answers}")
    rng = np.random.default_rng(cfg.seed)
    p = sample_lengths(cfg.prompt, n_prompts, rng)
    c = sample_lengths(cfg.completion, n_prompts * answers, rng).reshape(n_prompts, answers)
    assert (p + c.max(axis=1) + 2 <= cfg.max_length).all(), "lengths must fit max_length (no truncation)"
    scores = [rng.permutation(answers).astype(float).tolist() for _ in range(n_prompts)]

    def words(n: int) -> str:
        return " ".join(f"t{i}" for i in rng.integers(N_SPECIAL, cfg.vocab_size, n))

    rows = []
    for i in range(n_prompts):
        prompt = words(p[i])
        rows.append({"prompt": prompt, "completions": [" " + words(n) for n in c[i]], "scores": scores[i]})
    return rows


def expand_lists(lists: list[dict]) -> list[dict]:
    """Each list row as its pairs: every two answers with different scores, the higher-scored one chosen.
    A prompt's pairs are adjacent (in the order of its answers: (0, 1), (0, 2), ..., (K-2, K-1))."""
    pairs = []
    for row in lists:
        answers, scores = row["completions"], row["scores"]
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                if scores[i] == scores[j]:
                    continue
                better, worse = (i, j) if scores[i] > scores[j] else (j, i)
                pairs.append({"prompt": row["prompt"], "chosen": answers[better], "rejected": answers[worse]})
    return pairs


def load_pairs(assets: Path) -> list[dict]:
    return load_rows(assets, "pairs")


def load_rows(assets: Path, data: str = "pairs") -> list[dict]:
    """The rows of ``pairs.jsonl`` or ``lists.jsonl``."""
    with open(Path(assets) / f"{data}.jsonl") as f:
        return [json.loads(line) for line in f]
