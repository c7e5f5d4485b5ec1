"""The chunked log-prob path equals the plain full-logits computation, gradients included."""
import pytest
import torch

from preftune.logps import LogpsRequest
from preftune.logps.causal import (LogpsOptions, _token_stats, _vocab_mean_logit, chunk_tokens, chunked_token_stats, plain_sequence_logps,
                            sequence_logps, supports_chunked)

from .tiny import tiny_causal_lm


def batch(vocab=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 6:] = 0  # right padding
    attn[3, 8:] = 0
    comp = torch.zeros_like(ids)
    comp[0, 4:] = 1
    comp[1, 3:6] = 1
    comp[2, 5:] = 1
    comp[3, 2:8] = 1
    ids = ids.masked_fill(attn == 0, 0)
    return ids, attn, comp


def test_hand_counted_tokens_and_rows():
    torch.manual_seed(0)
    model = tiny_causal_lm("llama").eval()
    ids, attn, comp = batch()
    rows = torch.tensor([True, True, False, False])
    out = sequence_logps(model, ids, attn, comp, LogpsRequest(sequence_rows=rows))
    assert out.completion_tokens.tolist() == [5.0, 3.0, 4.0, 6.0]
    # whole-sequence tokens: every real token but the first, for the asked rows only
    assert out.sequence_tokens.tolist() == [8.0, 5.0, 0.0, 0.0]
    logits = model(ids, attention_mask=attn).logits.float()
    logp = torch.log_softmax(logits[0, 3:8], -1).gather(-1, ids[0, 4:9, None]).sum()
    assert out.completion_logps[0].item() == pytest.approx(logp.item(), abs=1e-5)


FIELDS = ("completion_logps", "sequence_logps", "completion_tokens", "sequence_tokens", "completion_logits_sum",
          "completion_wpo_avg", "completion_entropy_sum", "completion_top1")


def assert_chunked_equals_plain(model, chunk_size=None, wpo=False, atol=1e-5, fused=True):
    ids, attn, comp = batch(vocab=model.config.vocab_size)
    rows = torch.tensor([True, True, False, False])

    def run(fn, **kw):
        model.zero_grad()
        out = fn(model, ids, attn, comp, LogpsRequest(sequence_rows=rows, wpo=wpo, token_metrics=True), **kw)
        (out.completion_logps.sum() * 0.7 + out.sequence_logps.sum() * 0.3).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    chunked, g_chunked = run(sequence_logps, options=LogpsOptions(chunk_size=chunk_size, fused_head=fused))
    plain, g_plain = run(plain_sequence_logps)
    for field in FIELDS:
        assert torch.allclose(getattr(chunked, field), getattr(plain, field), atol=atol), field
    assert g_chunked.keys() == g_plain.keys() and g_plain
    for name in g_plain:
        assert torch.allclose(g_chunked[name], g_plain[name], atol=atol), name
    return chunked, plain


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
@pytest.mark.parametrize("wpo", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_chunked_equals_plain_with_gradients(arch, chunk_size, wpo, fused):
    model = tiny_causal_lm(arch).eval()  # no dropout; gradients still flow
    assert supports_chunked(model)
    chunked, _ = assert_chunked_equals_plain(model, chunk_size, wpo, fused=fused)
    if wpo:  # log Σ p² was subtracted (without WPO the field is just the mean log-prob)
        assert not torch.allclose(chunked.completion_wpo_avg, chunked.completion_avg_logps)


def tiny_softcapped_lm(softcap=1.5):
    """A 2-layer Gemma2 (final_logit_softcapping), its head scaled so that the cap bites."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                          final_logit_softcapping=softcap, tie_word_embeddings=False)
    model = tf.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.mark.parametrize("chunk_size", [3, None])
@pytest.mark.parametrize("wpo", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_softcapped_model_chunked_equals_plain(chunk_size, wpo, fused):
    """The chunked path caps the logits itself (the model's own head never runs); the plain path
    gets them capped from the model. The vocabulary-mean logit comes from the capped logits."""
    model = tiny_softcapped_lm()
    ids, attn, _ = batch()
    raw = model.lm_head(model(ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1])
    assert raw.abs().max() > 3 * model.config.final_logit_softcapping  # the cap changes the logits
    assert_chunked_equals_plain(model, chunk_size, wpo, atol=1e-4, fused=fused)


def test_softcapped_model_with_shared_prefix():
    from preftune.logps.prefix import shared_prefix_logps, supports_prefix_sharing

    from .test_prefix import MIXED, make_batch

    model = tiny_softcapped_lm()
    if not supports_prefix_sharing(model):
        pytest.skip("prefix sharing does not support this model")
    b = make_batch(MIXED)
    rows = torch.arange(8) < 4
    got = shared_prefix_logps(model, b, LogpsRequest(sequence_rows=rows, wpo=True, token_metrics=True),
                              options=LogpsOptions(chunk_size=5))
    want = plain_sequence_logps(model, b.input_ids, b.attention_mask, b.completion_mask,
                                LogpsRequest(sequence_rows=rows, wpo=True, token_metrics=True))
    for field in FIELDS:
        assert torch.allclose(getattr(got, field), getattr(want, field), atol=1e-4), field


@pytest.mark.parametrize("head_kind", ["linear", "bias", "sequential"])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("wpo", [False, True])
@pytest.mark.parametrize("size", [1, 3, 64])
def test_chunked_token_stats_equal_textbook(head_kind, softcap, wpo, size):
    """cross_entropy per chunk (+ WPO's log Σp², + the vocabulary-mean logit) against the textbook
    gather − logsumexp over the full logits: values and gradients of the hidden states and the head."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 50, bias=head_kind == "bias")
    head = torch.nn.Sequential(linear) if head_kind == "sequential" else linear
    with torch.no_grad():
        linear.weight.mul_(5)
        if linear.bias is not None:
            linear.bias.normal_()
    h = torch.randn(11, 16)
    y = torch.randint(0, 50, (11,))
    with torch.no_grad():
        y[::3] = head(h).argmax(-1)[::3]  # some targets are the argmax: top-1 hits to count
    upstream = torch.randn(11)

    def run(fn):
        head.zero_grad()
        x = h.clone().requires_grad_()
        stats = fn(x)
        (stats[0] * upstream).sum().backward()
        return stats, [x.grad, *(p.grad for p in head.parameters())]

    got, g_got = run(lambda x: chunked_token_stats(head, x, y, softcap, wpo, size, metrics=True))
    want, g_want = run(lambda x: _token_stats(head(x), y, softcap, wpo, metrics=True))
    assert len(got) == len(want) == 5
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert not any(t.requires_grad for t in got[1:])
    assert got[3].min() > 0  # entropy
    assert torch.equal(got[4].bool(), head(h).argmax(-1) == y)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5)


def test_vocab_mean_logit_without_logits():
    """mean_v(h·W_v + b_v) = h·mean(W) + mean(b) for a plain Linear head; no shortcut where that
    is not seen to hold."""
    torch.manual_seed(0)
    h = torch.randn(7, 16)
    for bias in (False, True):
        head = torch.nn.Linear(16, 50, bias=bias)
        assert torch.allclose(_vocab_mean_logit(head, h, None), head(h).mean(-1), atol=1e-6)
        assert torch.allclose(_vocab_mean_logit(head.bfloat16(), h.bfloat16(), None),
                              head(h.bfloat16()).float().mean(-1), atol=2e-2)
    head = torch.nn.Linear(16, 50)
    assert _vocab_mean_logit(head, h, 30.0) is None  # softcapping: tanh is not linear
    assert _vocab_mean_logit(torch.nn.Sequential(head), h, None) is None  # another head class (LoRA, ...)

    class Subclass(torch.nn.Linear):  # e.g. quantized layers subclass nn.Linear
        pass

    assert _vocab_mean_logit(Subclass(16, 50), h, None) is None
    handle = head.register_forward_hook(lambda m, i, o: o + 1)
    assert _vocab_mean_logit(head, h, None) is None
    handle.remove()
    assert _vocab_mean_logit(head, h, None) is not None


@pytest.mark.parametrize("change", ["bias", "hook"])
def test_logits_metric_with_biased_or_hooked_head(change):
    """The logits/* metric equals the plain path's with a biased head (shortcut: + mean(b)) and with
    a hook that shifts every logit (log-probs unchanged, mean logit +1: no shortcut may be taken)."""
    model = tiny_causal_lm("llama").eval()
    if change == "bias":
        old = model.lm_head
        model.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            model.lm_head.weight.copy_(old.weight)
            model.lm_head.bias.normal_(mean=0.5)
    else:
        model.lm_head.register_forward_hook(lambda m, i, o: o + 1.0)
    assert_chunked_equals_plain(model, chunk_size=4, wpo=True)


def test_detached_statistics_are_not_recomputed_in_backward(monkeypatch):
    """Checkpoint recomputation stops once the log-probs' saved tensors are rebuilt: WPO's logsumexp
    and the per-chunk logit mean run in the forward only."""
    calls = []
    logsumexp, mean = torch.logsumexp, torch.Tensor.mean
    monkeypatch.setattr(torch, "logsumexp", lambda *a, **k: calls.append("logsumexp") or logsumexp(*a, **k))
    monkeypatch.setattr(torch.Tensor, "mean", lambda *a, **k: calls.append("mean") or mean(*a, **k))
    head = torch.nn.Sequential(torch.nn.Linear(16, 50))  # not a plain Linear: the mean comes from each chunk
    h = torch.randn(10, 16, requires_grad=True)
    logps, *_ = chunked_token_stats(head, h, torch.randint(0, 50, (10,)), None, True, 4)
    assert calls.count("logsumexp") == 3 and calls.count("mean") == 3  # one each per chunk
    calls.clear()
    logps.sum().backward()
    assert calls == [] and h.grad is not None


def test_default_chunk_size():
    """On CPU about `hidden` tokens, never more than 2^26 logits; elsewhere 2^26 logits; at least 64 tokens."""
    assert chunk_tokens(32000, 256, "cpu") == 256  # benchmarks' small config: 31 MiB of fp32 logits
    assert chunk_tokens(128256, 896, torch.device("cpu")) == (1 << 26) // 128256 == 523
    assert chunk_tokens(96, 32, "cpu") == 64
    assert chunk_tokens(32000, 256, "cuda") == (1 << 26) // 32000 == 2097
    assert chunk_tokens(2_000_000, 4096, "cuda") == 64


def test_chunked_never_builds_full_logits():
    """The model's own head sees no position; our head sees at most one chunk at a time."""
    model = tiny_causal_lm("llama")
    ids, attn, comp = batch()
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    sequence_logps(model, ids, attn, comp, options=LogpsOptions(chunk_size=4)).completion_logps.sum().backward()
    assert seen[0] == (4, 0, 96)  # the model's own call: no positions
    assert all(s[0] <= 4 and len(s) == 2 for s in seen[1:])  # (tokens ≤ chunk, vocab), forward and recompute
    assert len(seen) > 2


def test_completion_weights_and_wpo_match_hand_computation():
    """Row 0's completion is tokens 4..8 (5 tokens); weights 1,1,0.5,0.5,0.5 scale their log-probs.
    WPO's per-token term is log p(y_t) − log Σ_v p_v², averaged over the completion."""
    model = tiny_causal_lm("llama").eval()
    ids, attn, comp = batch()
    weights = torch.ones(ids.shape)
    weights[0, 6:] = 0.5
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, attention_mask=attn).logits.float(), -1)
        token = logp[0, 3:8].gather(-1, ids[0, 4:9, None]).squeeze(-1)
        expected = (token * torch.tensor([1, 1, 0.5, 0.5, 0.5])).sum()
        expected_wpo = (token - torch.logsumexp(2 * logp[0, 3:8], -1)).mean()
        for fn in (sequence_logps, plain_sequence_logps):
            out = fn(model, ids, attn, comp, LogpsRequest(completion_weights=weights, wpo=True))
            assert out.weighted_completion_logps[0].item() == pytest.approx(expected.item(), abs=1e-5)
            assert out.preference_logps is out.weighted_completion_logps
            assert out.completion_logps[0].item() == pytest.approx(token.sum().item(), abs=1e-5)
            assert out.completion_tokens[0].item() == 5.0  # counts stay unweighted
            assert out.completion_wpo_avg[0].item() == pytest.approx(expected_wpo.item(), abs=1e-5)
