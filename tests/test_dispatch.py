"""The log-prob path is chosen once per model, says which path it took and why, and each path equals the plain
computation."""
import logging

import pytest
import torch

import preftune.logps.prefix as prefix_module
from preftune.data.collate import EncoderDecoderCollator, PreferenceBatch, Seq2SeqBatch
from preftune.logps import LogpsOptions, LogpsRequest, choose_logps_path, plain_sequence_logps
from preftune.logps.dispatch import CAUSAL, ENCODER_DECODER, PREFIX_SHARED, VISION
from preftune.train.objectives import DPOObjective, ORPOObjective, ld_token_weights

from .test_prefix import MIXED, make_batch
from .tiny import tiny_causal_lm, tiny_seq2seq_lm

FIELDS = ("completion_logps", "completion_tokens", "sequence_logps", "sequence_tokens", "completion_logits_sum",
          "completion_wpo_avg", "weighted_completion_logps")


def count_blockers(monkeypatch):
    """Calls of prefix_sharing_blockers, by the id of the model they were asked about."""
    calls = []
    real = prefix_module.prefix_sharing_blockers
    monkeypatch.setattr(prefix_module, "prefix_sharing_blockers", lambda m: calls.append(id(m)) or real(m))
    return calls


# ------------------------------------------------------------------ which path, and why


def test_prefix_shared_path_and_its_description():
    path = choose_logps_path(tiny_causal_lm("llama"))
    assert path.kind == PREFIX_SHARED and path.chunked
    assert path.description == "log-probs: prefix-shared packed rows (sdpa)"


def test_a_blocked_model_takes_the_chunked_path_and_says_why():
    model = tiny_causal_lm("llama")
    model.config._attn_implementation = "flash_attention_2"
    path = choose_logps_path(model)
    assert path.kind == CAUSAL and path.chunked
    assert path.description.startswith("log-probs: chunked causal; prefix sharing off: attention implementation "
                                       "'flash_attention_2' does not take a custom 4D mask")


@pytest.mark.parametrize("options, kind, chunked, line", [
    (LogpsOptions(prefix_sharing=False), CAUSAL, True,
     "log-probs: chunked causal; prefix sharing off: logps_prefix_sharing=False"),
    (LogpsOptions(chunked=False), CAUSAL, False, "log-probs: plain causal (full logits); logps_chunked=False"),
])
def test_the_flags_choose_the_path(options, kind, chunked, line, monkeypatch):
    calls = count_blockers(monkeypatch)
    path = choose_logps_path(tiny_causal_lm("llama"), options)
    assert (path.kind, path.chunked, path.description) == (kind, chunked, line)
    assert calls == []  # prefix sharing is off by flag: the model is not examined for it


def test_a_model_without_logits_to_keep_takes_the_plain_path():
    import transformers as tf

    class OldForward(tf.LlamaForCausalLM):  # a forward from before logits_to_keep
        def forward(self, input_ids=None, attention_mask=None, use_cache=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    torch.manual_seed(0)
    model = OldForward(tiny_causal_lm("llama").config).eval()
    path = choose_logps_path(model)
    assert path.kind == CAUSAL and not path.chunked
    assert "does not accept logits_to_keep" in path.description
    assert_path_equals_plain(path, model, make_batch(MIXED))


@pytest.mark.parametrize("options, head", [(LogpsOptions(), "chunked LM head"),
                                           (LogpsOptions(chunked=False), "the model's own logits (logps_chunked=False)")])
def test_encoder_decoder_path(options, head):
    path = choose_logps_path(tiny_seq2seq_lm("t5"), options)
    assert path.kind == ENCODER_DECODER
    assert path.description == (f"log-probs: encoder-decoder, prompt encoded once per pair, {head}; "
                                "prefix sharing does not apply")


def test_vision_path(monkeypatch):
    from .test_vlm import build_model

    calls = count_blockers(monkeypatch)
    path = choose_logps_path(build_model(vocab_size=64, image_token_id=63))
    assert path.kind == VISION and path.chunked
    assert path.description == ("log-probs: vision-language, chunked causal with the batch's image inputs; "
                                "prefix sharing off: image features are merged into the prompt")
    assert calls == []


def test_no_module_level_memory_of_models(monkeypatch):
    """Choosing is a pure function of the model: each choice examines it again, no hidden cache keeps ids."""
    calls = count_blockers(monkeypatch)
    model = tiny_causal_lm("llama")
    choose_logps_path(model), choose_logps_path(model)
    assert calls == [id(model), id(model)]
    assert not hasattr(prefix_module, "_REPORTED")


def test_a_batch_of_the_other_kind_is_refused():
    seq2seq_batch = Seq2SeqBatch.from_inputs(EncoderDecoderCollator(pad_token_id=0)(
        [dict(prompt_ids=[5, 6], chosen_ids=[7], rejected_ids=[8, 9])]))
    model = tiny_causal_lm("llama")
    for options in (LogpsOptions(), LogpsOptions(prefix_sharing=False)):
        with pytest.raises(ValueError, match="PreferenceCollator"):
            choose_logps_path(model, options)(model, seq2seq_batch)


# ------------------------------------------------------------------ each path equals the plain computation


def run(fn, model, batch, request):
    model.zero_grad()
    out = fn(model, batch, request)
    loss = out.completion_logps.sum() * 0.7 + out.sequence_logps.sum() * 0.3 + out.weighted_completion_logps.sum() * 0.1
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_path_equals_plain(path, model, batch: PreferenceBatch, atol=1e-5):
    n, t = batch.input_ids.shape
    request = LogpsRequest(sequence_rows=torch.arange(n) < n // 2,
                           completion_weights=torch.linspace(0.5, 1.5, t).expand(n, t).contiguous(), wpo=True)
    got, g_got = run(path, model, batch, request)
    want, g_want = run(lambda m, b, r: plain_sequence_logps(m, b.input_ids, b.attention_mask, b.completion_mask, r),
                       model, batch, request)
    for field in FIELDS:
        assert torch.allclose(getattr(got, field), getattr(want, field), atol=atol), field
    assert g_got.keys() == g_want.keys() and g_want
    for name in g_want:
        assert torch.allclose(g_got[name], g_want[name], atol=atol), name


@pytest.mark.parametrize("options, kind", [(LogpsOptions(chunk_size=3), PREFIX_SHARED),
                                           (LogpsOptions(chunk_size=3, prefix_sharing=False), CAUSAL),
                                           (LogpsOptions(chunked=False), CAUSAL)])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_decoder_only_path_equals_plain(arch, options, kind):
    model = tiny_causal_lm(arch).eval()
    path = choose_logps_path(model, options)
    assert path.kind == kind
    assert_path_equals_plain(path, model, make_batch(MIXED))


def test_encoder_decoder_path_equals_plain():
    from .test_seq2seq import _batch, plain_logps

    model = tiny_seq2seq_lm("bart").eval()
    batch = _batch()
    rows = torch.tensor([True, True, False, False])
    out = choose_logps_path(model, LogpsOptions(chunk_size=3))(model, batch, LogpsRequest(sequence_rows=rows))
    want = plain_logps(model, batch)
    assert torch.allclose(out.completion_logps, want, atol=1e-5)
    assert torch.allclose(out.sequence_logps, torch.where(rows, want, 0.0), atol=1e-5)


# ------------------------------------------------------------------ the objectives' request


def test_the_objectives_build_the_request_they_used_to_pass():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]])
    orpo = ORPOObjective(beta=0.1).logps_request(mask)
    assert orpo.sequence_rows.tolist() == [True, True, False, False]
    assert orpo.completion_weights is None and not orpo.wpo
    assert ORPOObjective(beta=0.1, nll_completion_only=True).logps_request(mask).sequence_rows is None
    dpo = DPOObjective(loss_fns=(), loss_weights=(), params=None, use_weighting=True, ld_alpha=0.5).logps_request(mask)
    assert dpo.sequence_rows is None and dpo.wpo
    assert torch.equal(dpo.completion_weights, ld_token_weights(mask, 0.5))


# ------------------------------------------------------------------ chosen once per training run


def test_dpo_run_chooses_each_models_path_once(tmp_path, monkeypatch, caplog):
    """Several DPO steps (policy, a separate reference, an evaluation): prefix_sharing_blockers runs once
    for the policy and once for the reference, and the trainer logs its path once."""
    from preftune import DPOConfig, DPOTrainer

    from .test_trainer import pairs, tiny

    calls = count_blockers(monkeypatch)
    model, tok = tiny()
    ref, _ = tiny()
    args = DPOConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, save_strategy="no",
                     report_to="none", logging_steps=1)
    with caplog.at_level(logging.INFO, logger="preftune"):
        trainer = DPOTrainer(model, ref, args=args, processing_class=tok, train_dataset=pairs(), eval_dataset=pairs(4))
        trainer.train()
        trainer.evaluate()
    assert trainer.state.global_step == 3
    assert trainer.logps_path.kind == PREFIX_SHARED and trainer.reference.path.kind == PREFIX_SHARED
    assert calls.count(id(model)) == 1 and calls.count(id(ref)) == 1 and len(calls) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "preftune.train.trainer" and "log-probs:" in r.getMessage()]
    assert lines == [trainer.logps_path.description]
