"""Encoder-decoder models (T5, BART): tokenization, collation, log-probs, ORPO/DPO end to end, the CLI.

Tiny random-init T5 and BART models and tiny offline tokenizers (tests/data/tiny_tokenizers.py:
"t5" appends </s>; "bart" writes <s> ... </s>) share one vocabulary, so ids are exact.
"""
import json
import math
import random

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from preftune import ConfigError, DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer
from preftune.data.collate import EncoderDecoderCollator, PreferenceBatch, PreferenceCollator, Seq2SeqBatch, batch_from_inputs
from preftune.data.formats import PreferencePair
from preftune.data.prepare import _fingerprint, prepare_dataset
from preftune.logps import LogpsOptions
from preftune.data.tokenize import LengthLimits, TokenizedPair, tokenize_pair, truncate_pair
from preftune.train.reference import AdapterDisabledReference, ModelReference, PrecomputedReference
from preftune.logps import LogpsRequest, choose_logps_path
from preftune.logps.seq2seq import encoder_decoder_logps
from preftune.train.objectives import ld_token_weights

from .data.tiny_tokenizers import V, build
from .tiny import tiny_seq2seq_lm

BOS, EOS, PAD = V["<s>"], V["</s>"], V["<pad>"]
HELLO, WORLD, FINE, THANKS, BAD = V["hello"], V["world"], V["fine"], V["thanks"], V["bad"]
THE, CAT, SAT, ON, MAT = V["the"], V["cat"], V["sat"], V["on"], V["mat"]
ARCHS = ("t5", "bart")
NO_LIMITS = LengthLimits(None, None, None)
DPO_METRICS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"}
ORPO_METRICS = DPO_METRICS | {"log_odds_chosen", "log_odds_ratio", "nll_loss"}


@pytest.fixture(scope="module")
def toks():
    return {arch: build(arch) for arch in ARCHS}


def model_and_tok(arch, toks, seed=0):
    return tiny_seq2seq_lm(arch, seed=seed), toks[arch]


# ------------------------------------------------------------------ tokenization

PAIR = PreferencePair("hello world", "fine thanks", "bad")


def test_t5_pair_exact_ids(toks):
    tp = tokenize_pair(PAIR, toks["t5"], is_encoder_decoder=True)
    # prompt: the tokenizer's own </s>; completions: decoder targets ending with one EOS, no BOS
    assert tp == TokenizedPair([HELLO, WORLD, EOS], [FINE, THANKS, EOS], [BAD, EOS], None, EOS)


def test_bart_pair_exact_ids(toks):
    tp = tokenize_pair(PAIR, toks["bart"], is_encoder_decoder=True)
    # BART's tokenizer writes <s> ... </s> on both sides (its generation starts the answer with <s>)
    assert tp == TokenizedPair([BOS, HELLO, WORLD, EOS], [BOS, FINE, THANKS, EOS], [BOS, BAD, EOS], BOS, EOS)


def test_eos_never_doubled_and_decoder_only_unchanged(toks):
    pair = PreferencePair("hello", "fine </s>", "bad")
    assert tokenize_pair(pair, toks["t5"], is_encoder_decoder=True).chosen_ids == [FINE, EOS]
    # the flag off: the decoder-only rules (no specials from the tokenizer, EOS appended once)
    assert tokenize_pair(PAIR, toks["t5"]) == TokenizedPair([HELLO, WORLD], [FINE, THANKS, EOS], [BAD, EOS], None)


def test_conversational_rows_need_a_chat_template(toks):
    chat = PreferencePair([{"role": "user", "content": "hello"}], [{"role": "assistant", "content": "fine"}],
                          [{"role": "assistant", "content": "bad"}])
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_pair(chat, toks["t5"], is_encoder_decoder=True)


LONG_T5 = TokenizedPair([THE, CAT, SAT, ON, MAT, EOS], [FINE, THANKS, EOS], [BAD, EOS], None, EOS)
LONG_BART = TokenizedPair([BOS, THE, CAT, SAT, ON, MAT, EOS], [BOS, FINE, THANKS, EOS], [BOS, BAD, EOS], BOS, EOS)


def test_prompt_cut_to_max_prompt_length_keeping_its_specials():
    limits = LengthLimits(max_length=100, max_prompt_length=3, truncation_mode="keep_end")  # the pair is far below max_length: cut anyway
    assert truncate_pair(LONG_T5, limits, is_encoder_decoder=True).prompt_ids == [ON, MAT, EOS]
    start = LengthLimits(max_length=100, max_prompt_length=3, truncation_mode="keep_start")
    assert truncate_pair(LONG_T5, start, is_encoder_decoder=True).prompt_ids == [THE, CAT, EOS]
    four = LengthLimits(max_length=100, max_prompt_length=4, truncation_mode="keep_end")
    assert truncate_pair(LONG_BART, four, is_encoder_decoder=True).prompt_ids == [BOS, ON, MAT, EOS]
    four_start = LengthLimits(max_length=100, max_prompt_length=4, truncation_mode="keep_start")
    assert truncate_pair(LONG_BART, four_start, is_encoder_decoder=True).prompt_ids == [BOS, THE, CAT, EOS]
    # the decoder-only rule would leave this pair whole (it fits in max_length)
    assert truncate_pair(LONG_T5, limits) is LONG_T5


def test_completions_cut_to_max_completion_length_and_max_length():
    cut = truncate_pair(LONG_T5, LengthLimits(None, None, max_completion_length=2), is_encoder_decoder=True)
    assert cut == TokenizedPair(LONG_T5.prompt_ids, [FINE, THANKS], [BAD, EOS], None, EOS)  # a cut target loses its EOS
    cut = truncate_pair(LONG_T5, LengthLimits(max_length=2, max_prompt_length=None, truncation_mode="keep_end"),
                        is_encoder_decoder=True)
    assert cut == TokenizedPair([MAT, EOS], [FINE, THANKS], [BAD, EOS], None, EOS)  # max_length caps every sequence
    assert truncate_pair(LONG_T5, LengthLimits(max_length=6, max_prompt_length=6), is_encoder_decoder=True) is LONG_T5


def test_prepare_dataset_with_the_flag(toks):
    rows = [{"prompt": "the cat sat on mat", "chosen": "fine thanks", "rejected": "bad"}] * 3
    ds = Dataset.from_list(rows)
    limits = LengthLimits(max_length=64, max_prompt_length=3, max_completion_length=2, truncation_mode="keep_end")
    out, report = prepare_dataset(ds, toks["t5"], limits, is_encoder_decoder=True)
    assert out[0] == {"prompt_ids": [ON, MAT, EOS], "chosen_ids": [FINE, THANKS], "rejected_ids": [BAD, EOS]}
    assert (report.n_kept, report.n_truncated) == (3, 3)
    listed, _ = prepare_dataset(rows, toks["t5"], limits, is_encoder_decoder=True)
    assert listed[:] == out[:]
    plain, _ = prepare_dataset(ds, toks["t5"], limits)
    assert plain[0]["prompt_ids"] == [THE, CAT, SAT, ON, MAT]  # decoder-only: no cut, no specials
    assert _fingerprint(ds, toks["t5"], limits, None, True) != _fingerprint(ds, toks["t5"], limits, None, False)


# --------------------------------------------------------------------- collation

FEATURES = [
    {"prompt_ids": [11, 12, 2], "chosen_ids": [21, 22, 2], "rejected_ids": [31, 2]},
    {"prompt_ids": [13, 2], "chosen_ids": [23, 2], "rejected_ids": [32, 33, 34, 2], "extra": "ignored"},
]


def test_collator_exact():
    out = EncoderDecoderCollator(pad_token_id=0)(FEATURES)
    assert set(out) == {"prompt_input_ids", "prompt_attention_mask", "completion_input_ids", "completion_mask"}
    assert out["prompt_input_ids"].tolist() == [[11, 12, 2], [13, 2, 0]]  # once per pair
    assert out["prompt_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["completion_input_ids"].tolist() == [[21, 22, 2, 0], [23, 2, 0, 0], [31, 2, 0, 0], [32, 33, 34, 2]]
    assert out["completion_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    batch = batch_from_inputs(out)
    assert isinstance(batch, Seq2SeqBatch) and batch.batch_size == 2 and batch.ref_logps is None
    assert isinstance(batch_from_inputs(PreferenceCollator(0)(FEATURES)), PreferenceBatch)
    padded = EncoderDecoderCollator(pad_token_id=0, pad_to_multiple_of=8)(FEATURES)
    assert padded["prompt_input_ids"].shape == (2, 8) and padded["completion_input_ids"].shape == (4, 8)


def test_collator_carries_reference_logps():
    features = [{**f, "ref_chosen_logps": -1.0 - i, "ref_rejected_logps": -5.0 - i} for i, f in enumerate(FEATURES)]
    out = EncoderDecoderCollator(pad_token_id=0)(features)
    assert out["ref_logps"].tolist() == [-1.0, -2.0, -5.0, -6.0]
    assert Seq2SeqBatch.from_inputs(out).ref_logps.tolist() == [-1.0, -2.0, -5.0, -6.0]
    with pytest.raises(ValueError, match="completion_input_ids"):
        Seq2SeqBatch(out["prompt_input_ids"], out["prompt_attention_mask"], out["completion_input_ids"][:2],
                     out["completion_mask"][:2])


# --------------------------------------------------------------------- log-probs


def _batch(features=FEATURES):
    return Seq2SeqBatch.from_inputs(EncoderDecoderCollator(pad_token_id=0)(features))


def plain_logps(model, batch: Seq2SeqBatch, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The textbook computation: each prompt repeated for its two completions, labels with -100 on padding;
    `weights` (2B, Tc): per-token weights (LD-DPO), else 1."""
    labels = batch.completion_input_ids.masked_fill(batch.completion_mask == 0, -100)
    logits = model(input_ids=batch.prompt_input_ids.repeat(2, 1), attention_mask=batch.prompt_attention_mask.repeat(2, 1),
                   labels=labels).logits
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_input_ids[..., None]).squeeze(-1)
    return (logps * batch.completion_mask * (1.0 if weights is None else weights)).sum(1)


# The families whose LM head runs in chunks (preftune.logps.seq2seq.CHUNKED_FAMILIES), and the log-prob options.
MODEL_ARCHS = ("t5", "mt5", "bart", "mbart")
OPTIONS = {"chunked": LogpsOptions(), "chunked-3": LogpsOptions(chunk_size=3),
           "checkpointed": LogpsOptions(fused_head=False, chunk_size=3), "plain": LogpsOptions(chunked=False)}


@pytest.mark.parametrize("arch", MODEL_ARCHS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_logps_equal_the_plain_computation_values_and_gradients(arch, opts):
    model = tiny_seq2seq_lm(arch).eval()
    batch = _batch()
    coef = torch.tensor([1.0, -0.5, 2.0, 0.3])
    rows = torch.tensor([True, True, False, False])
    out = encoder_decoder_logps(model, batch, LogpsRequest(sequence_rows=rows), options=OPTIONS[opts])
    (out.completion_logps * coef).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = plain_logps(model, batch)
    (expected * coef).sum().backward()
    theirs = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(out.completion_logps, expected, atol=1e-5)
    assert out.completion_tokens.tolist() == [3, 2, 2, 4]
    assert torch.allclose(out.completion_avg_logps, expected / torch.tensor([3.0, 2, 2, 4]), atol=1e-5)
    # ORPO's NLL: the decoder targets of the rows asked for
    assert torch.allclose(out.sequence_logps, torch.where(rows, expected, 0.0), atol=1e-5)
    assert out.sequence_tokens.tolist() == [3, 2, 0, 0]
    assert out.aux_loss is None and out.weighted_completion_logps is None
    assert ours.keys() == theirs.keys() and any("encoder" in n for n in ours)  # the encoder gets its gradient
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("arch", MODEL_ARCHS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_logits_metric_weights_and_wpo_match_the_full_logits(arch, opts):
    model = tiny_seq2seq_lm(arch).eval()
    batch = _batch()
    weights = torch.rand(batch.completion_mask.shape)
    with torch.no_grad():
        out = encoder_decoder_logps(model, batch, LogpsRequest(completion_weights=weights, wpo=True, token_metrics=True),
                                    options=OPTIONS[opts])
        labels = batch.completion_input_ids.masked_fill(batch.completion_mask == 0, -100)
        logits = model(input_ids=batch.prompt_input_ids.repeat(2, 1),
                       attention_mask=batch.prompt_attention_mask.repeat(2, 1), labels=labels).logits.float()
    mask = batch.completion_mask.float()
    logp = torch.log_softmax(logits, -1)
    token = logp.gather(-1, batch.completion_input_ids[..., None]).squeeze(-1)
    assert torch.allclose(out.completion_logits_sum, (logits.mean(-1) * mask).sum(1), atol=1e-5)
    assert torch.allclose(out.weighted_completion_logps, (token * weights * mask).sum(1), atol=1e-5)
    log_sq = torch.logsumexp(2 * logp, -1)
    assert torch.allclose(out.completion_wpo_avg, ((token - log_sq) * mask).sum(1) / mask.sum(1), atol=1e-5)
    entropy = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(out.completion_entropy_sum, (entropy * mask).sum(1), atol=1e-5)
    top1 = (logits.argmax(-1) == batch.completion_input_ids).float()
    assert torch.equal(out.completion_top1, (top1 * mask).sum(1))


@pytest.mark.parametrize("arch", MODEL_ARCHS)
@pytest.mark.parametrize("opts", ["chunked", "plain"])
def test_the_full_logits_are_never_formed(arch, opts, monkeypatch):
    """Chunked: the model's LM head is handed zero positions (its output has no elements); the
    chunks are formed from the scored decoder states only. (A hook on the head turns the closed-form
    backward off, so the chunks go through the head module and the hook sees them; without the hook
    the closed-form path's own matmuls are counted.)"""
    import preftune.logps.head as head_module

    model = tiny_seq2seq_lm(arch).eval()
    if opts == "chunked":
        rows = []  # rows of every matmul with the (V, H) head weight (F is torch.nn.functional: all calls pass here)
        real = head_module.F.linear
        vocab = model.config.vocab_size

        def linear(x, w, *rest):
            if w.shape[0] == vocab:
                rows.append(x.numel() // x.shape[-1])  # positions in this call
            return real(x, w, *rest)

        monkeypatch.setattr(head_module.F, "linear", linear)
        encoder_decoder_logps(model, _batch(), options=LogpsOptions(chunk_size=4))
        assert rows == [0, 4, 4, 3]  # the model's own call gets 0 positions; then 11 scored tokens in chunks of 4
    sizes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: sizes.append(out.numel()))
    try:
        encoder_decoder_logps(model, _batch(), options=OPTIONS[opts])
    finally:
        handle.remove()
    batch = _batch()
    full = batch.completion_input_ids.numel() * model.config.vocab_size
    if opts == "plain":
        assert sizes == [full]
    else:
        scored = int(batch.completion_mask.sum())
        assert sizes[0] == 0 and sum(sizes[1:]) == scored * model.config.vocab_size  # forward chunks only


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_runs_once_per_pair(arch):
    model = tiny_seq2seq_lm(arch).eval()
    seen = []
    handle = model.get_encoder().register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        encoder_decoder_logps(model, _batch())
    finally:
        handle.remove()
    assert seen == [2]  # B = 2 pairs, not 2B = 4 rows


@pytest.mark.parametrize("arch", ARCHS)
def test_one_pair_batch(arch):
    """B = 1: the (1, Tp) encoder mask would broadcast silently against 2 rows; it is expanded like the states."""
    model = tiny_seq2seq_lm(arch).eval()
    batch = _batch(FEATURES[1:])
    with torch.no_grad():
        assert torch.allclose(encoder_decoder_logps(model, batch).completion_logps, plain_logps(model, batch), atol=1e-5)


def test_dispatch_by_batch_kind():
    model = tiny_seq2seq_lm("t5").eval()
    with torch.no_grad():
        out = choose_logps_path(model, LogpsOptions(chunk_size=7))(model, _batch())
        assert torch.allclose(out.completion_logps, plain_logps(model, _batch()), atol=1e-5)
    with pytest.raises(ValueError, match="EncoderDecoderCollator"):
        choose_logps_path(model)(model, PreferenceBatch.from_inputs(PreferenceCollator(0)(FEATURES)))


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_reaches_functional_dropout(arch):
    """T5's attention and all of BART's dropout are functional (float rates on the layers, no nn.Dropout)."""
    from preftune.models import disable_dropout

    model = tiny_seq2seq_lm(arch)
    disable_dropout(model)
    batch = _batch()
    with torch.no_grad():
        train = encoder_decoder_logps(model.train(), batch).completion_logps
        assert torch.equal(train, encoder_decoder_logps(model.eval(), batch).completion_logps)


# ------------------------------------------------------------------ end to end


WORDS = "a b c d e f g h".split()


def rows(n, seed=0):
    """Prompts of letters; the chosen answer is polite ("yes fine thanks"), the rejected one curt."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = "Q: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 2)))
        out.append({"prompt": prompt, "chosen": f"yes fine thanks {tail}".strip(), "rejected": f"no bad {tail}".strip()})
    return out


def config(cls, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), max_steps=2, learning_rate=1e-3, per_device_train_batch_size=4,
                    per_device_eval_batch_size=8, logging_steps=1, save_strategy="no", report_to="none",
                    max_length=32, max_prompt_length=16, use_cpu=True)
    settings.update(overrides)
    return cls(**settings)


def logged(trainer):
    keys = set()
    for entry in trainer.state.log_history:
        if "loss" in entry:
            assert math.isfinite(entry["loss"]), entry
            keys |= set(entry)
    return keys


@pytest.mark.parametrize("arch", ARCHS)
def test_dpo_end_to_end(arch, toks, tmp_path):
    model, tok = model_and_tok(arch, toks)
    trainer = DPOTrainer(model=model, args=config(DPOConfig, tmp_path), processing_class=tok,
                         train_dataset=Dataset.from_list(rows(16)), eval_dataset=Dataset.from_list(rows(8, seed=1)))
    assert trainer.is_encoder_decoder is True
    assert isinstance(trainer.data_collator, EncoderDecoderCollator)
    assert isinstance(trainer.reference, ModelReference) and trainer.reference.model is not trainer.model
    first = trainer.train_dataset[0]
    assert first["chosen_ids"][-1] == EOS and first["prompt_ids"][-1] == EOS
    # policy == reference copy: every pair's loss is exactly log 2
    assert trainer.evaluate()["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    assert trainer.state.global_step == 2
    assert DPO_METRICS <= logged(trainer)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


@pytest.mark.parametrize("arch", ARCHS)
def test_orpo_end_to_end(arch, toks, tmp_path):
    model, tok = model_and_tok(arch, toks)
    trainer = ORPOTrainer(model=model, args=config(ORPOConfig, tmp_path), processing_class=tok,
                          train_dataset=Dataset.from_list(rows(16)))
    assert trainer.reference is None
    trainer.train()
    assert trainer.state.global_step == 2
    assert ORPO_METRICS <= logged(trainer)
    # the NLL is over the decoder targets (the chosen completions), one token mean over the batch (as
    # TRL); logps/chosen is the mean of each pair's per-token mean: close, equal only for equal lengths
    metrics = trainer.evaluate(eval_dataset=Dataset.from_list(rows(8, seed=1)))
    assert metrics["eval_nll_loss"] == pytest.approx(-metrics["eval_logps/chosen"], rel=0.1)


def test_dpo_lora_on_t5_uses_the_adapter_disabled_reference(toks, tmp_path):
    model, tok = model_and_tok("t5", toks)
    base = tiny_seq2seq_lm("t5").eval()  # same seed: the same weights
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
    trainer = DPOTrainer(model=model, args=config(DPOConfig, tmp_path, max_steps=4, learning_rate=5e-3),
                         processing_class=tok, train_dataset=Dataset.from_list(rows(16)), peft_config=lora)
    assert isinstance(trainer.reference, AdapterDisabledReference)
    eval_rows = Dataset.from_list(rows(8, seed=1))
    assert trainer.evaluate(eval_dataset=eval_rows)["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    assert DPO_METRICS <= logged(trainer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    batch = Seq2SeqBatch.from_inputs(inputs)
    ref = trainer.reference.logps(trainer.model, batch)
    with torch.no_grad():
        assert torch.allclose(ref.completion_logps, plain_logps(base, batch), atol=1e-4)
        policy = encoder_decoder_logps(trainer.model, batch).completion_logps
    assert not torch.allclose(policy, ref.completion_logps, atol=1e-4)  # the adapter moved the policy


def test_cli_lora_task_type_is_fixed_for_seq2seq(toks):
    from peft import PeftModelForSeq2SeqLM

    from preftune.models import apply_peft

    model = apply_peft(tiny_seq2seq_lm("t5"), LoraConfig(r=2, target_modules=["q", "v"], task_type="CAUSAL_LM"))
    assert isinstance(model, PeftModelForSeq2SeqLM)


def test_dpo_precomputed_reference_and_ld_wpo(toks, tmp_path):
    model, tok = model_and_tok("bart", toks)
    args = config(DPOConfig, tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(tmp_path / "cache"),
                  ld_alpha=0.5, use_weighting=True)
    trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows(16)))
    assert isinstance(trainer.reference, PrecomputedReference)
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    first = trainer.data_collator([trainer.train_dataset[0]])
    batch = Seq2SeqBatch.from_inputs(first)
    with torch.no_grad():  # LD-DPO weights the reference's log-probs too (TRL 1.16)
        expected = plain_logps(tiny_seq2seq_lm("bart").eval(), batch, ld_token_weights(batch.completion_mask, 0.5))
    assert torch.allclose(first["ref_logps"], expected, atol=1e-4)
    trainer.train()
    assert DPO_METRICS | {"wpo_weights"} <= logged(trainer)


def test_flag_contradicting_the_model_is_refused(toks, tmp_path):
    model, tok = model_and_tok("t5", toks)
    with pytest.raises(ConfigError, match="is_encoder_decoder"):
        ORPOTrainer(model=model, args=config(ORPOConfig, tmp_path, is_encoder_decoder=False), processing_class=tok,
                    train_dataset=Dataset.from_list(rows(4)))


def test_eval_generations_keep_the_whole_answer(toks):
    from preftune.outputs.generations import generate_from_ids

    model, tok = model_and_tok("bart", toks)
    with torch.no_grad():
        model.final_logits_bias[0, V["yes"]] = 100.0  # greedy answer: "yes" every step
    prompt = tok("Q: a b c").input_ids  # 6 ids: as many as the 1 + 5 decoder tokens generated
    [answer] = generate_from_ids(model, tok, [prompt], max_new_tokens=5)
    out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= len(prompt)  # so a decoder-only slice (after len(prompt)) would leave nothing
    assert answer == tok.decode(out[0], skip_special_tokens=True).strip() and answer.startswith("yes yes yes")


# ------------------------------------------------------------------ loading, CLI


@pytest.fixture
def t5_folder(tmp_path, toks):
    folder = tmp_path / "tiny-t5"
    model, tok = model_and_tok("t5", toks)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def test_load_model_picks_the_seq2seq_class(t5_folder):
    from transformers import T5ForConditionalGeneration

    from preftune.models import load_model

    assert type(load_model(t5_folder)) is T5ForConditionalGeneration


def test_cli_dpo_on_a_t5_folder(t5_folder, tmp_path, monkeypatch):
    from preftune import cli

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(12)))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["dpo", "--model", t5_folder, "--dataset", str(data), "--max_steps", "2", "--output_dir", str(out),
                     "--report_to", "none", "--use_cpu", "true", "--per_device_train_batch_size", "4",
                     "--logging_steps", "1", "--save_strategy", "no"])
    assert code == 0
    config = json.loads((out / "preftune_config.json").read_text())
    assert config["is_encoder_decoder"] is True
    assert (out / "model.safetensors").exists()


# ------------------------------------------------------------------ learning


@pytest.mark.slow
@pytest.mark.parametrize("trainer_cls,config_cls", [(DPOTrainer, DPOConfig), (ORPOTrainer, ORPOConfig)])
def test_t5_learns_a_held_out_preference(trainer_cls, config_cls, toks, tmp_path):
    """20 steps on prompts of letters; held-out prompts are new letter strings. Measured: DPO accuracy 0 -> 1,
    margin 0 -> 7.9; ORPO accuracy 0.75 -> 1, margin 0.23 -> 1.9."""
    model, tok = model_and_tok("t5", toks)
    args = config(config_cls, tmp_path, max_steps=20, learning_rate=3e-3, per_device_train_batch_size=8, beta=0.5,
                  logging_steps=10)
    trainer = trainer_cls(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows(160)),
                          eval_dataset=Dataset.from_list(rows(32, seed=99)))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    if trainer_cls is DPOTrainer:
        assert before["eval_rewards/accuracies"] == 0.0  # policy == reference: ties, no wins
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.5


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_and_ui_answers_are_the_decoder_tokens(arch, toks):
    """generate returns only decoder tokens for these models: nothing may be sliced off as 'prompt'."""
    import copy

    from preftune.apps.chat import ChatSession, GenerationSettings
    from preftune.apps.ui import answer

    model, tok = model_and_tok(arch, toks)
    tok = copy.deepcopy(tok)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    messages = [{"role": "user", "content": "hello world how are you"}]
    unused = range(len(tok), model.config.vocab_size)  # ids the tiny tokenizer has no word for
    model.eval().generation_config.suppress_tokens = [*tok.all_special_ids, *unused]  # only words: never an empty answer
    model.generation_config.forced_eos_token_id = None  # BART forces EOS at the length limit
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    expected = tok.decode(out[0], skip_special_tokens=True).strip()
    assert len(expected.split()) >= 5  # slicing at the prompt's length would have cut into these words
    assert answer(model, tok, messages, max_new_tokens=6) == expected
    session = ChatSession(model, tok, GenerationSettings(max_new_tokens=6))
    assert session.send("hello world how are you") == expected


def test_data_inspect_uses_the_encoder_decoder_rules(t5_folder, tmp_path):
    """`preftune data inspect --model <T5>` counts truncation as training that model does (prompt and
    completions limited separately), read from the model's config.json; decoder-only rules count otherwise."""
    from datasets import Dataset

    from preftune.cli.inspect import format_report, inspect_dataset
    from preftune.models import load_tokenizer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(40, seed=3)))
    limits = dict(max_length=9, max_prompt_length=6, max_completion_length=5)
    report = inspect_dataset(str(data), model=t5_folder, **limits)
    assert report["is_encoder_decoder"] is True and report["pairs"] == 40
    _, prep = prepare_dataset(Dataset.from_list(rows(40, seed=3)), load_tokenizer(t5_folder),
                              LengthLimits(9, 6, 5, "keep_end"), is_encoder_decoder=True)
    assert 0 < prep.n_truncated < 40  # the limits cut some pairs, not all
    assert (report["truncated"], report["dropped_by_truncation"]) == (prep.n_truncated,
                                                                       prep.n_dropped_empty_after_truncation)
    decoder_rules = inspect_dataset(str(data), model=t5_folder, is_encoder_decoder=False, **limits)
    assert decoder_rules["truncated"] != report["truncated"]  # the check above can tell the two apart
    assert "encoder-decoder" in format_report(report)
