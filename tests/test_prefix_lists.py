"""N-branch prefix sharing (issue 17): a list row's K answers packed after their prompt, computed once,
equal scoring each answer in its own row — values and gradients, sdpa and eager, padded and one-row."""
import pytest
import torch

from preftune.data.collate import ListBatch, ListCollator
from preftune.logps import LogpsRequest
from preftune.logps.causal import LogpsOptions
from preftune.logps.prefix import PAD, SHARED, pack_shared_prefix, prefix_sharing_mask, shared_prefix_logps

from .test_prefix import assert_same, chunked
from .tiny import tiny_causal_lm


def list_batch(specs, vocab=96, seed=0):
    """specs: (prompt length, [answer lengths], [tokens the answers begin with, shared by all])."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    features = []
    for spec in specs:
        p, lengths, common = (*spec, 0) if len(spec) == 2 else spec
        head = tok(common)
        answers = [head + tok(n - common) for n in lengths]
        features.append(dict(prompt_ids=tok(p), completion_ids=answers,
                             scores=[float(len(lengths) - k) for k in range(len(lengths))]))
    return ListBatch.from_inputs(ListCollator(pad_token_id=0)(features))


# 4 answers of different lengths; 2 answers; 3 answers beginning alike; 1 prompt of one token with 5 answers
MIXED_LISTS = [(5, [3, 6, 1, 4]), (2, [4, 1]), (3, [5, 4, 2], 2), (1, [2, 2, 3, 1, 2])]


def test_list_collator_by_hand():
    """Prompt 10 11 with answers [20 21], [30]; prompt 12 with answers [40], [41 42], [43]: 5 rows, width 4."""
    features = [dict(prompt_ids=[10, 11], completion_ids=[[20, 21], [30]], scores=[1.0, 0.0]),
                dict(prompt_ids=[12], completion_ids=[[40], [41, 42], [43]], scores=[0.5, 2.0, 0.5],
                     ref_completion_logps=[-1.0, -2.0, -3.0])]
    features[0]["ref_completion_logps"] = [-4.0, -5.0]
    out = ListCollator(pad_token_id=0)(features)
    assert out["input_ids"].tolist() == [[10, 11, 20, 21], [10, 11, 30, 0], [12, 40, 0, 0], [12, 41, 42, 0],
                                         [12, 43, 0, 0]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert out["groups"].tolist() == [0, 0, 1, 1, 1] and out["scores"].tolist() == [1.0, 0.0, 0.5, 2.0, 0.5]
    assert out["ref_logps"].tolist() == [-4.0, -5.0, -1.0, -2.0, -3.0]
    batch = ListBatch.from_inputs(out)
    assert batch.batch_size == 2 and torch.equal(batch.row_groups, out["groups"])


def test_layout_by_hand():
    """Prompt 10 11, answers [20 21], [30], [20 22]: the shared prefix is the prompt (the answers differ at their
    first token... except 1 and 3, which share 20, but the group's prefix is common to ALL rows) → packed
    10 11 | 20 21 | 30 | 20 22 (L = 7), positions 0 1 | 2 3 | 2 | 2 3, branches 1, 2, 3."""
    features = [dict(prompt_ids=[10, 11], completion_ids=[[20, 21], [30], [20, 22]], scores=[2.0, 1.0, 0.0]),
                dict(prompt_ids=[12], completion_ids=[[40], [40, 41]], scores=[1.0, 0.0])]
    layout = pack_shared_prefix(ListBatch.from_inputs(ListCollator(0)(features)))
    S, P = SHARED, PAD
    assert layout.input_ids.tolist() == [[10, 11, 20, 21, 30, 20, 22], [12, 40, 41, 12, 12, 12, 12]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2, 2, 3], [0, 1, 2, 0, 0, 0, 0]]
    assert layout.segments.tolist() == [[S, S, 1, 1, 2, 3, 3], [S, S, 2, P, P, P, P]]
    assert layout.shared_len.tolist() == [2, 2] and layout.group_size.tolist() == [3, 2]
    assert layout.row_offset.tolist() == [0, 2, 3, 0, 0] and layout.real_tokens == 10
    # answer 3's second token (22, packed index 6) sees the prompt and its own branch only
    mask = prefix_sharing_mask(layout)[0, 0]
    assert mask[6].tolist() == [True, True, False, False, False, True, True]
    assert mask[4].tolist() == [True, True, False, False, True, False, False]
    # plain (row 2, position 3) = answer 3's token 22 → packed 6; (row 4, position 2) = token 41 → group 1's 2
    assert layout.packed_index(torch.tensor([2, 4]), torch.tensor([3, 2])).tolist() == [6, 7 + 2]
    one = pack_shared_prefix(ListBatch.from_inputs(ListCollator(0)(features)), one_row=True)
    assert one.input_ids.tolist() == [[10, 11, 20, 21, 30, 20, 22, 12, 40, 41]]
    assert one.groups.tolist() == [[0] * 7 + [1] * 3] and one.group_starts.tolist() == [0, 7]


def rows_of(batch, kind):
    n = batch.input_ids.shape[0]
    return None if kind == "none" else torch.arange(n) % 2 == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("rows", ["none", "some"])
def test_lists_equal_plain_with_gradients(arch, attn, rows):
    model = tiny_causal_lm(arch).eval()
    model.set_attn_implementation(attn)
    batch = list_batch(MIXED_LISTS)
    assert_same(model, batch, rows_of(batch, rows))
    assert_same(model, batch, rows_of(batch, rows), reference=chunked, options=LogpsOptions(chunk_size=3))
    assert_same(model, batch, rows_of(batch, rows), options=LogpsOptions(padding_free=True))


def test_prompt_computed_once_per_list():
    """One prompt of P = 8 with K = 4 answers of 3 tokens: the plain batch runs K·(P + 3) = 44 tokens through the
    decoder, the packed row P + 4·3 = 20. (Its 6 pairs, trained as pairs with prefix sharing, run 6·(8 + 3 + 3) = 84.)"""
    model = tiny_causal_lm("llama").eval()
    batch = list_batch([(8, [3, 3, 3, 3])])
    seen = {"layer": 0}

    def count(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["layer"] += hidden.shape[0] * hidden.shape[1]

    model.model.layers[0].register_forward_pre_hook(count, with_kwargs=True)
    with torch.no_grad():
        shared_prefix_logps(model, batch, LogpsRequest())
    assert seen["layer"] == 20 and pack_shared_prefix(batch).real_tokens == 20


def test_moe_aux_loss_weights_shared_tokens_by_group_size():
    """A shared token of a group of K rows stands for K plain tokens: aux_loss equals the plain batch's."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.MixtralForCausalLM(tf.MixtralConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                                   num_local_experts=4, num_experts_per_tok=2,
                                                   output_router_logits=True)).eval()
    out = assert_same(model, list_batch(MIXED_LISTS), None)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
