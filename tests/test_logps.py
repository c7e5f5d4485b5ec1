"""The chunked log-prob path equals the plain full-logits computation, gradients included."""
import pytest
import torch

from preftune.logps import plain_sequence_logps, sequence_logps, supports_chunked

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
    out = sequence_logps(model, ids, attn, comp, sequence_rows=rows)
    assert out.completion_tokens.tolist() == [5.0, 3.0, 4.0, 6.0]
    # whole-sequence tokens: every real token but the first, for the asked rows only
    assert out.sequence_tokens.tolist() == [8.0, 5.0, 0.0, 0.0]
    logits = model(ids, attention_mask=attn).logits.float()
    logp = torch.log_softmax(logits[0, 3:8], -1).gather(-1, ids[0, 4:9, None]).sum()
    assert out.completion_logps[0].item() == pytest.approx(logp.item(), abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_chunked_equals_plain_with_gradients(arch, chunk_size):
    model = tiny_causal_lm(arch).eval()  # no dropout; gradients still flow
    assert supports_chunked(model)
    ids, attn, comp = batch()
    rows = torch.tensor([True, True, False, False])

    def run(fn, **kw):
        model.zero_grad()
        out = fn(model, ids, attn, comp, sequence_rows=rows, **kw)
        (out.completion_logps.sum() * 0.7 + out.sequence_logps.sum() * 0.3).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    chunked, g_chunked = run(sequence_logps, chunk_size=chunk_size)
    plain, g_plain = run(plain_sequence_logps)
    for field in ("completion_logps", "sequence_logps", "completion_tokens", "sequence_tokens", "completion_logits_sum"):
        assert torch.allclose(getattr(chunked, field), getattr(plain, field), atol=1e-5), field
    assert g_chunked.keys() == g_plain.keys()
    for name in g_plain:
        assert torch.allclose(g_chunked[name], g_plain[name], atol=1e-5), name


def test_chunked_never_builds_full_logits():
    """The model's own head sees no position; our head sees at most one chunk at a time."""
    model = tiny_causal_lm("llama")
    ids, attn, comp = batch()
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    sequence_logps(model, ids, attn, comp, chunk_size=4).completion_logps.sum().backward()
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
            out = fn(model, ids, attn, comp, completion_weights=weights, wpo=True)
            assert out.weighted_completion_logps[0].item() == pytest.approx(expected.item(), abs=1e-5)
            assert out.preference_logps is out.weighted_completion_logps
            assert out.completion_logps[0].item() == pytest.approx(token.sum().item(), abs=1e-5)
            assert out.completion_tokens[0].item() == 5.0  # counts stay unweighted
            assert out.completion_wpo_avg[0].item() == pytest.approx(expected_wpo.item(), abs=1e-5)
