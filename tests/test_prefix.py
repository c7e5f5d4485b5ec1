"""Shared-prefix log-probs equal the plain concatenated forward, gradients included, and run each prompt once."""
import pytest
import torch

from preftune.data.collate import PreferenceBatch, PreferenceCollator
from preftune.logps import LogpsRequest
from preftune.logps.causal import LogpsOptions, plain_sequence_logps, sequence_logps
from preftune.logps.prefix import (CHOSEN, PAD, REJECTED, SHARED, pack_shared_prefix, prefix_sharing_blockers,
                             shared_prefix_logps, supports_prefix_sharing)

from .tiny import tiny_causal_lm

FIELDS = ("completion_logps", "completion_tokens", "sequence_logps", "sequence_tokens", "completion_logits_sum",
          "completion_wpo_avg", "weighted_completion_logps", "completion_entropy_sum", "completion_top1")


def make_batch(specs, vocab=96, seed=0):
    """specs: (prompt length, chosen length, rejected length[, tokens both completions begin with])."""
    g = torch.Generator().manual_seed(seed)
    features = []
    for spec in specs:
        p, c, r, common = (*spec, 0) if len(spec) == 3 else spec
        tok = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
        head = tok(common)
        chosen, rejected = head + tok(c - common), head + tok(r - common)
        if common < min(c, r) and chosen[common] == rejected[common]:
            rejected[common] = 3 + (rejected[common] - 2) % (vocab - 3)  # the completions part after `common` tokens
        features.append(dict(prompt_ids=tok(p), chosen_ids=chosen, rejected_ids=rejected))
    return PreferenceBatch.from_inputs(PreferenceCollator(pad_token_id=0)(features))


# Prompts of different lengths, right padding, completions of different lengths within a pair,
# and a pair whose completions begin alike (the shared prefix runs into them).
MIXED = [(5, 3, 6), (2, 4, 1), (7, 2, 2), (3, 5, 4, 2)]


def run(fn, model, batch, rows, weights):
    model.zero_grad()
    out = fn(model, batch, rows, weights)
    loss = out.completion_logps.sum() * 0.7 + out.sequence_logps.sum() * 0.3 + out.weighted_completion_logps.sum() * 0.1
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def request(rows, weights):
    return LogpsRequest(sequence_rows=rows, completion_weights=weights, wpo=True, token_metrics=True)


def shared(model, batch, rows, weights, **kw):
    return shared_prefix_logps(model, batch, request(rows, weights), **kw)


def plain(model, batch, rows, weights):
    return plain_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                request(rows, weights))


def chunked(model, batch, rows, weights):
    return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, request(rows, weights))


def assert_same(model, batch, rows, reference=plain, atol=1e-5, **kw):
    weights = torch.linspace(0.5, 1.5, batch.input_ids.shape[1]).expand(batch.input_ids.shape).contiguous()
    got, g_got = run(lambda *a: shared(*a, **kw), model, batch, rows, weights)
    want, g_want = run(reference, model, batch, rows, weights)
    for field in FIELDS + ("aux_loss",):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.shape == b.shape and torch.allclose(a, b, atol=atol), (field, a, b)
    assert g_got.keys() == g_want.keys() and g_want
    for name in g_want:
        assert torch.allclose(g_got[name], g_want[name], atol=atol), name
    return got


def sequence_rows(kind, n):
    if kind == "none":
        return None
    return torch.arange(n) < n // 2 if kind == "chosen" else torch.ones(n, dtype=torch.bool)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("rows", ["none", "chosen", "all"])
def test_equals_plain_with_gradients(arch, attn, rows):
    model = tiny_causal_lm(arch).eval()  # no dropout; gradients still flow
    model.set_attn_implementation(attn)
    assert supports_prefix_sharing(model)
    batch = make_batch(MIXED)
    assert_same(model, batch, sequence_rows(rows, 8))
    assert_same(model, batch, sequence_rows(rows, 8), reference=chunked, options=LogpsOptions(chunk_size=3))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_of_one_and_identical_rows(arch):
    model = tiny_causal_lm(arch).eval()
    assert_same(model, make_batch([(4, 3, 5)]), sequence_rows("all", 2))
    # chosen == rejected: the whole row is shared, both branches are empty
    same = make_batch([(4, 3, 3, 3), (2, 2, 5)])
    assert pack_shared_prefix(same).shared_len.tolist() == [7, 2]
    assert_same(model, same, sequence_rows("all", 4))


def test_layout_by_hand():
    """Pair 0: prompt 10 11, chosen 20 21 22, rejected 30 → packed 10 11 20 21 22 30 (L = 6).
    Pair 1: prompt 12, chosen 40, rejected 40 41 (shares its first token) → 12 40 41 + padding."""
    features = [dict(prompt_ids=[10, 11], chosen_ids=[20, 21, 22], rejected_ids=[30]),
                dict(prompt_ids=[12], chosen_ids=[40], rejected_ids=[40, 41])]
    layout = pack_shared_prefix(PreferenceBatch.from_inputs(PreferenceCollator(0)(features)))
    S, C, R, P = SHARED, CHOSEN, REJECTED, PAD
    assert layout.input_ids.tolist() == [[10, 11, 20, 21, 22, 30], [12, 40, 41, 12, 12, 12]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 2], [0, 1, 2, 0, 0, 0]]
    assert layout.segments.tolist() == [[S, S, C, C, C, R], [S, S, R, P, P, P]]
    assert layout.shared_len.tolist() == [2, 2] and layout.real_tokens == 9
    # rejected token 30 (position 5) sees the prompt and itself, not the chosen tokens
    from preftune.logps.prefix import prefix_sharing_mask

    mask = prefix_sharing_mask(layout)[:, 0]
    assert mask[0, 5].tolist() == [True, True, False, False, False, True]
    assert mask[0, 4].tolist() == [True] * 5 + [False]
    assert mask[1, 4].tolist() == [False, False, False, False, True, False]  # padding sees itself only


def test_prompt_computed_once():
    """Pair 0: P=6, C=2+2; pair 1: P=2, C=4+4 — no padding in either layout.
    Decoder layer 0 sees plain Σ 2·(P+C) = 2·8 + 2·8 = 32 tokens, shared Σ(P+2C) = 10 + 10 = 20.
    With every row's whole sequence scored, the LM head sees plain Σ 2·(P−1+C) = 14 + 10 = 24
    tokens, shared Σ(P−1 + 2C) = 9 + 9 = 18 (the prompt's targets once; the last prompt state twice,
    once per first completion token)."""
    model = tiny_causal_lm("llama").eval()
    batch = make_batch([(6, 2, 2), (2, 4, 4)])
    seen = {"layer": 0, "head": 0}

    def count_layer(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["layer"] += hidden.shape[0] * hidden.shape[1]

    def count_head(module, args, output):
        if output.dim() == 2:  # our chunked calls; the model's own call has no positions
            seen["head"] += output.shape[0]

    model.model.layers[0].register_forward_pre_hook(count_layer, with_kwargs=True)
    model.lm_head.register_forward_hook(count_head)
    rows = sequence_rows("all", 4)
    with torch.no_grad():
        sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, LogpsRequest(sequence_rows=rows))
        assert seen == {"layer": 32, "head": 24}
        seen.update(layer=0, head=0)
        shared_prefix_logps(model, batch, LogpsRequest(sequence_rows=rows))
        assert seen == {"layer": 20, "head": 18}
    assert pack_shared_prefix(batch).real_tokens == 20


def test_sliding_windows_in_the_mask():
    """A window shorter than the rows changes the plain result; the packed mask applies it the same way,
    for a model with one windowed mask (Mistral) and one mixing full and sliding layers (Qwen2: mask dict)."""
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, num_key_value_heads=2)
    torch.manual_seed(0)
    mistral = tf.MistralForCausalLM(tf.MistralConfig(sliding_window=3, **common)).eval()
    torch.manual_seed(0)
    qwen = tf.Qwen2ForCausalLM(tf.Qwen2Config(use_sliding_window=True, sliding_window=3, max_window_layers=1,
                                              **common)).eval()
    assert sorted(set(qwen.config.layer_types)) == ["full_attention", "sliding_attention"]
    batch = make_batch(MIXED)
    for model in (mistral, qwen):
        assert supports_prefix_sharing(model)
        assert_same(model, batch, sequence_rows("chosen", 8))
    windowless = plain_sequence_logps(tiny_causal_lm("mistral").eval(), batch.input_ids, batch.attention_mask,
                                      batch.completion_mask)
    with torch.no_grad():
        windowed = plain_sequence_logps(mistral, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert not torch.allclose(windowed.completion_logps, windowless.completion_logps, atol=1e-4)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_moe_aux_loss_equals_plain(family):
    """Shared tokens carry weight 2 in the load-balancing loss, so aux_loss and its gradients match the plain batch."""
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  num_experts_per_tok=2, output_router_logits=True)
    torch.manual_seed(0)
    if family == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(intermediate_size=64, num_local_experts=4, **common))
    else:
        model = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(intermediate_size=64, moe_intermediate_size=16,
                                                          shared_expert_intermediate_size=32, num_experts=4, **common))
    model.eval()
    assert supports_prefix_sharing(model)
    out = assert_same(model, make_batch(MIXED), sequence_rows("chosen", 8))
    assert out.aux_loss is not None and out.aux_loss.item() > 0


def test_gradient_checkpointing_in_training_mode():
    model = tiny_causal_lm("llama")  # attention and hidden dropout are 0: train mode is deterministic
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    assert supports_prefix_sharing(model)
    assert_same(model, make_batch(MIXED), sequence_rows("chosen", 8))
    assert len(calls) == 4  # layer 0's MLP ran again in each backward: checkpointing was on


def test_lora_adapter():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_causal_lm("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                         init_lora_weights=False)).eval()
    assert supports_prefix_sharing(model)
    assert_same(model, make_batch(MIXED), sequence_rows("chosen", 8))


def test_unsupported_models_are_reported():
    model = tiny_causal_lm("llama")
    model.config._attn_implementation = "flash_attention_2"
    assert any("flash_attention_2" in b for b in prefix_sharing_blockers(model))
    with pytest.raises(ValueError, match="use sequence_logps instead"):
        shared_prefix_logps(model, make_batch(MIXED))

    import transformers as tf

    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                   num_heads=4))
    assert not supports_prefix_sharing(t5)

    peft = pytest.importorskip("peft")
    prefix_tuned = peft.get_peft_model(tiny_causal_lm("llama"), peft.PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                                        num_virtual_tokens=2))
    assert any("prompt-learning" in b for b in prefix_sharing_blockers(prefix_tuned))


def test_left_padding_is_refused():
    batch = make_batch([(3, 2, 2), (1, 1, 1)])
    ids, attn, comp = (t.flip(1) for t in (batch.input_ids, batch.attention_mask, batch.completion_mask))
    with pytest.raises(ValueError, match="right-padded"):
        shared_prefix_logps(tiny_causal_lm("llama"), PreferenceBatch(ids, attn, comp))


@pytest.mark.parametrize("sharing", [True, False])
def test_dpo_reference_follows_the_prefix_sharing_flag_and_equals_plain(tmp_path, sharing, monkeypatch):
    """The reference's no-grad pass shares prompts too (logps_prefix_sharing), with the plain path's values."""
    import preftune.logps.prefix as prefix_module
    from preftune import DPOConfig, DPOTrainer
    from preftune.data.collate import PreferenceBatch

    from .test_trainer import pairs, tiny

    model, tok = tiny()
    ref, _ = tiny()
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", logps_prefix_sharing=sharing)
    trainer = DPOTrainer(model, ref, args=args, processing_class=tok, train_dataset=pairs())
    assert trainer.reference.options.prefix_sharing is sharing
    batch = PreferenceBatch.from_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    calls = []
    real = prefix_module.shared_prefix_logps
    monkeypatch.setattr(prefix_module, "shared_prefix_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = trainer.reference.logps(trainer.model, batch)
    assert len(calls) == int(sharing)
    want = plain_sequence_logps(ref, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert torch.allclose(got.completion_logps, want.completion_logps, atol=1e-4)
