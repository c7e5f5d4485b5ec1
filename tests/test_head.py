"""The hand-written backward of a linear LM head (preftune/head.py) against autograd.

Exactness: gradcheck in fp64 (finite differences), and equality with both the
checkpointed chunks (`fused=False`) and the textbook full-logits computation,
values and gradients of h, W and b. Cost: a frozen head's backward recomputes no
logits (the head's matmul runs once per chunk, in the forward). Training: ORPO and
DPO with the fused head log the same losses as with it off.
"""
import pytest
import torch
from peft import LoraConfig, get_peft_model

import preftune.logps.head as head_module
from preftune.logps.head import LinearHeadLogps, fusable
from preftune.logps import LogpsRequest
from preftune.logps.causal import LogpsOptions, _token_stats, chunked_token_stats, plain_sequence_logps, sequence_logps

from .test_logps import FIELDS, batch
from .tiny import tiny_causal_lm

M, H, V = 23, 16, 40


def make(bias=True, frozen=False, dtype=torch.float32, scale=4.0, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.mul_(scale)  # spread the logits so softmax and softcap are far from uniform/linear
        if bias:
            head.bias.normal_()
    head.requires_grad_(not frozen)
    h = torch.randn(M, H, dtype=dtype, requires_grad=True)
    y = torch.randint(0, V, (M,))
    g = torch.randn(M, dtype=dtype)  # an arbitrary upstream gradient per token
    return head, h, y, g


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_trainable_head(softcap, bias):
    head, h, y, _ = make(bias=bias, dtype=torch.float64)
    params = (h, head.weight) + ((head.bias,) if bias else ())

    def f(h, w, b=None):
        return LinearHeadLogps.apply(h, w, b, y, softcap, 5, False, False)[0]

    assert torch.autograd.gradcheck(f, params)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_gradcheck_frozen_head(softcap):
    head, h, y, _ = make(frozen=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h: LinearHeadLogps.apply(h, head.weight, head.bias, y, softcap, 5, False, False)[0], (h,))


def _run(head, h, y, g, softcap, wpo, fused, size=6):
    h.grad = None
    head.zero_grad(set_to_none=True)
    if fused is None:  # the textbook computation over the full logits
        logps, mean, log_sq, entropy, top1 = _token_stats(head(h), y, softcap, wpo, metrics=True)
    else:
        logps, mean, log_sq, entropy, top1 = chunked_token_stats(head, h, y, softcap, wpo, size, fused=fused,
                                                                 metrics=True)
    (logps * g).sum().backward()
    grads = [h.grad] + [p.grad for p in head.parameters()]
    return [logps.detach(), mean, log_sq, entropy, top1] + [x.clone() if x is not None else None for x in grads]


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("wpo", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_checkpointed_and_textbook(softcap, frozen, wpo, bias):
    head, h, y, g = make(bias=bias, frozen=frozen)
    fused = _run(head, h, y, g, softcap, wpo, True)
    for other in (_run(head, h, y, g, softcap, wpo, False), _run(head, h, y, g, softcap, wpo, None)):
        for a, b in zip(fused, other):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=2e-5, rtol=1e-5), (a - b).abs().max()
    assert fused[5].abs().sum() > 0 and (frozen or fused[6].abs().sum() > 0)
    assert fused[3].min() > 0  # entropies
    with torch.no_grad():
        assert torch.equal(fused[4].bool(), head(h).argmax(-1) == y)  # tanh softcapping keeps the argmax


def test_frozen_head_backward_recomputes_no_logits(monkeypatch):
    """Trainable head: one matmul with W per chunk in forward, one more in backward (the recompute).
    Frozen head: the forward's only; backward just scales the stored gradient."""
    calls = []
    real = head_module.F.linear
    monkeypatch.setattr(head_module.F, "linear", lambda *a: calls.append(1) or real(*a))
    for frozen, backward_calls in ((False, 4), (True, 0)):
        head, h, y, g = make(frozen=frozen)
        calls.clear()
        logps, *_ = chunked_token_stats(head, h, y, None, False, 6, fused=True)  # 23 tokens: 4 chunks
        assert len(calls) == 4
        (logps * g).sum().backward()
        assert len(calls) == 4 + backward_calls
        assert h.grad is not None


@pytest.mark.parametrize("frozen", [False, True])
def test_bf16_autocast_and_bf16_weights_follow_autograd(frozen):
    """Under bf16 autocast (fp32 weights) and with bf16 weights, values and gradients match the
    checkpointed autograd path to bf16 precision, in the same dtypes."""
    for autocast in (True, False):
        dtype = torch.float32 if autocast else torch.bfloat16
        head, h, y, g = make(frozen=frozen, dtype=dtype, scale=1.0)
        outs = []
        for fused in (True, False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outs.append(_run(head, h, y, g.float(), None, False, fused))
        for a, b in zip(*outs):
            if a is not None:
                assert a.dtype == b.dtype
                assert torch.allclose(a.float(), b.float(), atol=0.02 * b.float().abs().max().item() + 1e-3)


def test_which_heads_are_fused():
    head, h, _, _ = make()
    assert fusable(head, h)
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(H, V)), LoraConfig(r=2, target_modules=["0"]))
    assert not fusable(lora.base_model.model[0], h)  # a LoRA layer: another class

    hooked = torch.nn.Linear(H, V)
    hooked.register_forward_pre_hook(lambda *a: None)  # e.g. DeepSpeed ZeRO-3 gathering the weight
    assert not fusable(hooked, h)

    class Sub(torch.nn.Linear):
        pass

    assert not fusable(Sub(H, V), h)
    assert not fusable(head, h.to(torch.float64).to("meta"))  # another device


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_model_gradients_equal_plain(arch):
    """With LoRA the head is frozen (the fast path); the adapter's gradients equal the plain path's."""
    model = get_peft_model(tiny_causal_lm(arch), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                             init_lora_weights=False)).eval()
    ids, attn, comp = batch(vocab=96)
    rows = torch.tensor([True, True, False, False])
    assert fusable(model.get_base_model().get_output_embeddings(), torch.zeros(1, 32))
    results = []
    for fn in (lambda: sequence_logps(model, ids, attn, comp, LogpsRequest(sequence_rows=rows)),
               lambda: plain_sequence_logps(model, ids, attn, comp, LogpsRequest(sequence_rows=rows))):
        model.zero_grad()
        out = fn()
        (out.completion_logps.sum() + 0.5 * out.sequence_logps.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (got, g_got), (want, g_want) = results
    for field in FIELDS:
        assert torch.allclose(getattr(got, field), getattr(want, field), atol=1e-5), field
    assert g_got.keys() == g_want.keys() and all("lora" in n for n in g_want)
    for name in g_want:
        assert torch.allclose(g_got[name], g_want[name], atol=1e-5), name


@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_training_losses_equal_with_the_fused_head_off(tmp_path, method):
    from preftune import DPOConfig, DPOTrainer, ORPOConfig, ORPOTrainer

    from .test_trainer import pairs, tiny

    histories = []
    for fused in (True, False):
        model, tok = tiny()
        Config, Trainer = (ORPOConfig, ORPOTrainer) if method == "orpo" else (DPOConfig, DPOTrainer)
        args = Config(output_dir=str(tmp_path / str(fused)), max_steps=3, learning_rate=5e-3, logging_steps=1,
                      per_device_train_batch_size=4, save_strategy="no", report_to="none", logps_fused_head=fused)
        assert LogpsOptions.from_args(args).fused_head is fused
        trainer = Trainer(model=model, args=args, processing_class=tok, train_dataset=pairs())
        trainer.train()
        histories.append([r["loss"] for r in trainer.state.log_history if "loss" in r])
    assert len(histories[0]) == 3
    assert histories[0][0] == pytest.approx(histories[1][0], rel=1e-6)  # same weights: same loss
    assert histories[0] == pytest.approx(histories[1], rel=2e-4)  # later steps: float rounding, amplified by lr 5e-3
