"""padding_free: the batch's rows packed into one row give the padded computation's log-probs and gradients."""
import logging

import pytest
import torch

from preftune.data.collate import PreferenceBatch, PreferenceCollator
from preftune.logps import LogpsRequest, choose_logps_path
from preftune.logps.causal import LogpsOptions, chunked_sequence_logps, plain_sequence_logps, sequence_logps
from preftune.logps.packing import pack_rows, padding_free_blockers
from preftune.logps.prefix import CHOSEN, REJECTED, SHARED, pack_shared_prefix, prefix_sharing_mask, shared_prefix_logps

from .test_prefix import FIELDS, MIXED, make_batch
from .tiny import tiny_causal_lm

PACKED = LogpsOptions(padding_free=True)
# float64 models; eager attention takes its softmax in float32 (transformers' eager_attention_forward), so a
# different summation order can move its results by float32 rounding.
TOL = {"sdpa": 1e-12, "eager": 1e-6}
# Two pairs: prompt 10 11 / chosen 20 21 22 / rejected 30, and prompt 12 / chosen 40 / rejected 40 41.
BY_HAND = [dict(prompt_ids=[10, 11], chosen_ids=[20, 21, 22], rejected_ids=[30]),
           dict(prompt_ids=[12], chosen_ids=[40], rejected_ids=[40, 41])]


def by_hand_batch():
    return PreferenceBatch.from_inputs(PreferenceCollator(0)(BY_HAND))


def model64(arch, attn="sdpa"):
    model = tiny_causal_lm(arch).eval().double()  # float64: packed and padded must agree to rounding
    model.set_attn_implementation(attn)
    return model


def run(fn, model, batch):
    """fn's SequenceLogps and the gradients of a loss using every field, for a request using every feature."""
    n, t = batch.input_ids.shape
    request = LogpsRequest(sequence_rows=torch.arange(n) % 3 == 0, wpo=True,
                           completion_weights=torch.linspace(0.5, 1.5, t).expand(n, t))
    model.zero_grad()
    out = fn(model, batch, request)
    loss = out.completion_logps.sum() * 0.7 + out.sequence_logps.sum() * 0.3 + out.weighted_completion_logps.sum()
    loss.backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def close(x, y, tol):
    """Max-norm relative closeness: |x − y|∞ ≤ tol·max(1, |y|∞) (float64 rounding is ~1e-16 of the largest value)."""
    x, y = x.double(), y.double()
    return x.shape == y.shape and float((x - y).abs().max()) <= tol * max(1.0, float(y.abs().max()))


def assert_equal(got, want, tol=1e-12):
    (a, ga), (b, gb) = got, want
    for field in FIELDS:
        assert close(getattr(a, field), getattr(b, field), tol), (field, getattr(a, field), getattr(b, field))
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert close(ga[name], gb[name], tol), name


def causal(chunked, padding_free):
    def fn(model, batch, request):
        args = (model, batch.input_ids, batch.attention_mask, batch.completion_mask, request)
        if chunked:
            return chunked_sequence_logps(*args, options=LogpsOptions(padding_free=padding_free))
        return plain_sequence_logps(*args, padding_free=padding_free)
    return fn


def shared(padding_free):
    return lambda model, batch, request: shared_prefix_logps(model, batch, request,
                                                             options=LogpsOptions(padding_free=padding_free))


# ------------------------------------------------------------------ layouts by hand


def test_pack_rows_by_hand():
    batch = by_hand_batch()  # rows: 10 11 20 21 22 | 12 40 | 10 11 30 | 12 40 41 (padded to 5)
    packed = pack_rows(batch.input_ids, batch.attention_mask)
    assert packed.input_ids.tolist() == [[10, 11, 20, 21, 22, 12, 40, 10, 11, 30, 12, 40, 41]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert packed.starts.tolist() == [0, 5, 7, 10]
    assert packed.index(torch.tensor([1, 3]), torch.tensor([1, 2])).tolist() == [6, 12]
    assert packed.model_inputs()["attention_mask"] is None


def test_left_padding_is_refused():
    batch = by_hand_batch()
    with pytest.raises(ValueError, match="padding_free needs right-padded rows"):
        pack_rows(batch.input_ids.flip(1), batch.attention_mask.flip(1))


def test_prefix_one_row_by_hand():
    """Per-pair rows [10 11 20 21 22 30] and [12 40 41 +3 pad] become one row of 6 + 3 tokens, no padding."""
    layout = pack_shared_prefix(by_hand_batch(), one_row=True)
    S, C, R = SHARED, CHOSEN, REJECTED
    assert layout.input_ids.tolist() == [[10, 11, 20, 21, 22, 30, 12, 40, 41]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 0, 1, 2]]
    assert layout.segments.tolist() == [[S, S, C, C, C, R, S, S, R]]
    assert layout.groups.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert layout.group_starts.tolist() == [0, 6] and layout.real_tokens == 9
    mask = prefix_sharing_mask(layout)[0, 0]
    assert mask[5].tolist() == [True, True, False, False, False, True, False, False, False]  # rejected 30
    assert mask[8].tolist() == [False] * 6 + [True, True, True]  # pair 1 never sees pair 0
    # plain token (row 3 = pair 1 rejected, position 2: token 41) sits at 6 + 2
    assert layout.packed_index(torch.tensor([3, 0]), torch.tensor([2, 4])).tolist() == [8, 4]


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_causal_paths_equal_padded(arch, attn):
    model, batch = model64(arch, attn), make_batch(MIXED)  # chosen and rejected of different lengths
    assert_equal(run(causal(True, True), model, batch), run(causal(True, False), model, batch), tol=TOL[attn])
    # the plain path takes its per-token statistics in float32 (`_token_stats`): equal to float32 rounding
    assert_equal(run(causal(False, True), model, batch), run(causal(False, False), model, batch), tol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_shared_one_row_equals_padded(arch, attn):
    model, batch = model64(arch, attn), make_batch(MIXED)
    assert_equal(run(shared(True), model, batch), run(shared(False), model, batch), tol=TOL[attn])  # row per pair
    # and the plain 2B padded rows (the prefix-shared path itself differs from them by ~1e-7 in its gradients)
    assert_equal(run(shared(True), model, batch), run(causal(True, False), model, batch), tol=1e-6)


def test_sliding_window_and_gpt2_positions():
    """Packed position ids drive the sliding window (Mistral, window 3) and learned absolute positions (GPT-2)."""
    import transformers as tf

    torch.manual_seed(0)
    mistral = tf.MistralForCausalLM(tf.MistralConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_key_value_heads=2, sliding_window=3)).eval().double()
    batch = make_batch(MIXED)
    for model in (mistral, model64("gpt2")):
        assert not padding_free_blockers(model)
        assert_equal(run(causal(True, True), model, batch), run(causal(True, False), model, batch))
        assert_equal(run(shared(True), model, batch), run(shared(False), model, batch))


def test_moe_aux_loss_equals_padded():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.MixtralForCausalLM(tf.MixtralConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True)).eval()
    # float32: the experts' grouped matmul takes no float64
    batch = make_batch(MIXED)
    with torch.no_grad():
        padded = chunked_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
        packed = chunked_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                        options=PACKED)
        one_row = shared_prefix_logps(model, batch, options=PACKED)
    assert padded.aux_loss.item() > 0
    assert torch.allclose(packed.aux_loss, padded.aux_loss, atol=1e-6)
    assert torch.allclose(one_row.aux_loss, padded.aux_loss, atol=1e-6)
    assert torch.allclose(packed.completion_logps, padded.completion_logps, atol=1e-5)


def test_the_model_sees_no_padding():
    """MIXED: rows of 5+3, 2+4, 7+2, 3+5 (chosen) and 5+6, 2+1, 7+2, 3+4 (rejected), padded to 11: the first
    decoder layer sees 8·11 = 88 tokens padded, Σ = 31 + 30 = 61 packed; the prefix-shared pair rows hold
    8+11−5, 6+3−2, 9+9−7, 8+7−5 = 14, 7, 11, 10 tokens: padded to 14 (4·14 = 56), or one row of 42."""
    model = tiny_causal_lm("llama").eval()
    batch = make_batch(MIXED)
    shapes = []
    model.model.layers[0].register_forward_pre_hook(
        lambda m, a, k: shapes.append(tuple((a[0] if a else k["hidden_states"]).shape[:2])), with_kwargs=True)
    args = (model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    with torch.no_grad():
        chunked_sequence_logps(*args)
        chunked_sequence_logps(*args, options=PACKED)
        plain_sequence_logps(*args, padding_free=True)
        shared_prefix_logps(model, batch)
        shared_prefix_logps(model, batch, options=PACKED)
    assert shapes == [(8, 11), (1, 61), (1, 61), (4, 14), (1, 42)]


# ------------------------------------------------------------------ where it applies


def test_dispatch_descriptions_and_fallbacks(caplog):
    model = tiny_causal_lm("llama")
    path = choose_logps_path(model, PACKED)
    assert path.kind == "prefix-shared" and path.options.padding_free and "padding-free" in path.description
    path = choose_logps_path(model, LogpsOptions(padding_free=True, prefix_sharing=False))
    assert path.kind == "causal" and path.options.padding_free
    assert path.description.startswith("log-probs: chunked causal, padding-free (one packed row)")
    path = choose_logps_path(model, LogpsOptions(padding_free=True, chunked=False))
    assert not path.chunked and path.options.padding_free
    # flash-attention reads packed position ids (varlen) though it takes no prefix-sharing mask
    model.config._attn_implementation = "flash_attention_2"
    path = choose_logps_path(model, PACKED)
    assert path.kind == "causal" and path.options.padding_free
    model.config._attn_implementation = "some_kernel"
    with caplog.at_level(logging.WARNING, logger="preftune.logps.dispatch"):
        path = choose_logps_path(model, PACKED)
    assert not path.options.padding_free and "padding_free off: attention implementation 'some_kernel'" in path.why
    assert "padding_free=True is off for LlamaForCausalLM" in caplog.text
    caplog.clear()
    assert choose_logps_path(model, LogpsOptions()).options == LogpsOptions()  # not asked: no word about it
    assert "padding_free" not in caplog.text


def test_encoder_decoder_falls_back():
    from .tiny import tiny_seq2seq_lm

    t5 = tiny_seq2seq_lm("t5")
    path = choose_logps_path(t5, PACKED)
    assert path.kind == "encoder-decoder" and not path.options.padding_free
    assert "padding_free off: encoder-decoder models are not supported" in path.why
    with pytest.raises(ValueError, match="padding_free is not exact for this model: encoder-decoder"):
        sequence_logps(t5, *make_batch(MIXED).to_dict().values(), options=PACKED)


def test_models_without_packed_masks_are_found():
    import transformers as tf

    bloom = tf.BloomForCausalLM(tf.BloomConfig(vocab_size=96, hidden_size=32, n_layer=1, n_head=4))
    assert any("position_ids" in b for b in padding_free_blockers(bloom))
    assert not choose_logps_path(bloom, PACKED).options.padding_free


# ------------------------------------------------------------------ the trainer


def test_dpo_trainer_loss_equals_padded(tmp_path):
    from preftune import DPOConfig, DPOTrainer

    from .test_trainer import pairs, tiny

    losses = {}
    for padding_free in (False, True):
        model, tok = tiny()
        ref, _ = tiny()
        args = DPOConfig(output_dir=str(tmp_path), report_to="none", padding_free=padding_free)
        trainer = DPOTrainer(model, ref, args=args, processing_class=tok, train_dataset=pairs())
        assert trainer.logps_path.options.padding_free is padding_free
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        with torch.no_grad():
            losses[padding_free] = trainer.compute_loss(trainer.model, batch).item()
        assert trainer.reference.logps(trainer.model, PreferenceBatch.from_inputs(batch)) is not None
        assert trainer.reference.path.options.padding_free is padding_free  # the reference packs its batch too
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
