"""Label log-probs through a plain linear LM head, with a hand-written backward.

`chunked_token_stats` (causal.py) checkpoints each chunk of the head, so autograd
recomputes the chunk's logits *and* its cross-entropy graph in backward and then
differentiates it. For a plain `nn.Linear` head the gradient is known in closed form:

    z = h·Wᵀ + b,   log p(y) = z_y − logsumexp(z),   ∂ log p(y) / ∂z = onehot(y) − softmax(z)

(with softcapping z' = c·tanh(z/c) the chain rule adds a factor 1 − tanh²(z/c)).
`LinearHeadLogps` keeps, per token, only logsumexp(z) from the forward; in backward it
rebuilds one chunk of logits, turns them into their gradient in place and multiplies
by W and h. Same matmuls as the checkpointed path, less elementwise work, one chunk of
logits alive at a time.

When the head is frozen (LoRA, QLoRA: W needs no gradient) it does better: the gradient
with respect to h, (onehot − p)·W per token, is computed in the forward while the logits
are there, so backward only scales it by the incoming gradient and never recomputes the
logits — two matmuls per chunk instead of three.

Precision follows autocast: the matmuls run in the dtype autocast would give `F.linear`
(bf16 under bf16 autocast; W is cast once per call, not once per chunk), softmax and
logsumexp in fp32, gradients are returned in the dtypes of h, W and b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def fusable(head, h: Tensor) -> bool:
    """True when `head` is a plain `nn.Linear` whose weight is an ordinary tensor on h's device.

    Excluded (they keep the checkpointed path): LoRA or quantized heads (another class), hooks or a
    replaced forward (e.g. DeepSpeed ZeRO-3 gathering the weight), sharded weights (DTensor).
    """
    if type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks or "forward" in vars(head):
        return False
    params = [head.weight] + ([head.bias] if head.bias is not None else [])
    return all(type(p) is torch.nn.Parameter and p.is_floating_point() and p.device == h.device for p in params)


def _wide(x: Tensor) -> Tensor:
    """Logits in fp32 for the softmax (fp64 kept as is, so gradcheck can check this function)."""
    return x if x.dtype == torch.float64 else x.float()


def _capped(z: Tensor, softcap) -> tuple[Tensor, Tensor | None]:
    """(z', tanh(z/c)) with z' = c·tanh(z/c), or (z, None) without softcapping; z is fp32 and overwritten."""
    if not softcap:
        return z, None
    t = z.div_(softcap).tanh_()
    return t * softcap, t


def _grad_logits(z: Tensor, lse: Tensor, y: Tensor, g: Tensor | None, t: Tensor | None) -> Tensor:
    """∂/∂z of Σ g·log p(y) (g = 1 when None), written over z: g·(onehot(y) − exp(z − lse)) · (1 − t²)."""
    g = torch.ones_like(lse) if g is None else g
    d = z.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # −g·p, one pass
    d.scatter_add_(1, y[:, None], g[:, None].to(d.dtype))  # g·(onehot − p)
    if t is not None:
        d.mul_(1 - t * t)
    return d


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype `F.linear(h, weight)` computes in here: autocast's where it is on (fp64 is never
    autocast), else the operands' own."""
    device = h.device.type
    if torch.is_autocast_enabled(device) and h.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return torch.promote_types(h.dtype, weight.dtype)


class LinearHeadLogps(torch.autograd.Function):
    """(M, H) hidden states, a linear head and (M,) targets → (M,) log p(target), one chunk at a time.

    Also returns, detached, each token's vocabulary-mean logit (when `want_mean`), WPO's
    log Σ_v p_v² (when `wpo`), and its entropy and top-1 hit (argmax == target, 1.0/0.0; when
    `metrics`), or zeros; only the log-probs have a gradient. The extras are read off each chunk's
    logits in the forward, before the frozen-head gradient overwrites them.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, size, wpo, want_mean, metrics=False):
        m = h.shape[0]
        logps = h.new_empty(m, dtype=torch.float64 if h.dtype == torch.float64 else torch.float32)
        lse_all = torch.empty_like(logps)
        mean = torch.zeros_like(logps)
        log_sq_sum = torch.zeros_like(logps)
        entropy = torch.zeros_like(logps)
        top1 = torch.zeros_like(logps)
        frozen = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1] and not ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h) if frozen else None  # ∂ log p / ∂h per token, for a frozen head
        compute_dtype = _compute_dtype(h, weight)
        with torch.autocast(h.device.type, enabled=False):
            # Cast once, not per chunk (autocast would re-cast a frozen weight at every call).
            w_c = weight.to(compute_dtype)
            b_c = None if bias is None else bias.to(compute_dtype)
            for s in range(0, m, size):
                y_c = targets[s : s + size]
                z, t = _capped(_wide(F.linear(h[s : s + size].to(compute_dtype), w_c, b_c)), softcap)
                # cross_entropy's fused log-softmax is ~1.4x faster on CPU than logsumexp; lse = CE + z_y
                ce = F.cross_entropy(z, y_c, reduction="none")
                lse = ce + z.gather(1, y_c[:, None]).squeeze(1)
                lse_all[s : s + size] = lse
                logps[s : s + size] = -ce
                if want_mean:
                    mean[s : s + size] = z.mean(-1)
                if wpo:
                    log_sq_sum[s : s + size] = torch.logsumexp(2 * z, -1) - 2 * lse
                if metrics:  # entropy = lse − Σ_v p_v z_v; argmax takes the first maximum, as TRL's is_top1
                    entropy[s : s + size] = lse - (torch.softmax(z, -1) * z).sum(-1)
                    top1[s : s + size] = (z.argmax(-1) == y_c).to(top1.dtype)
                if frozen:
                    grad_h[s : s + size] = _grad_logits(z, lse, y_c, None, t).to(compute_dtype) @ w_c
        ctx.softcap, ctx.size, ctx.frozen, ctx.compute_dtype = softcap, size, frozen, compute_dtype
        if frozen:
            ctx.save_for_backward(grad_h)
        else:
            ctx.save_for_backward(h, weight, bias, targets, lse_all)
        ctx.mark_non_differentiable(mean, log_sq_sum, entropy, top1)
        return logps, mean, log_sq_sum, entropy, top1

    @staticmethod
    def backward(ctx, g, _mean, _log_sq_sum, _entropy, _top1):
        if ctx.frozen:
            (grad_h,) = ctx.saved_tensors
            return (grad_h * g[:, None].to(grad_h.dtype),) + (None,) * 8
        h, weight, bias, targets, lse_all = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = ctx.compute_dtype
        with torch.autocast(h.device.type, enabled=False):
            w_c = weight.to(dtype)
            b_c = None if bias is None else bias.to(dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros_like(weight) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=lse_all.dtype, device=h.device) if need_b else None
            for s in range(0, h.shape[0], ctx.size):
                h_c = h[s : s + ctx.size].to(dtype)
                z, t = _capped(_wide(F.linear(h_c, w_c, b_c)), ctx.softcap)
                d = _grad_logits(z, lse_all[s : s + ctx.size], targets[s : s + ctx.size], g[s : s + ctx.size], t)
                if need_b:
                    grad_b += d.sum(0)
                d = d.to(dtype)
                if need_h:
                    grad_h[s : s + ctx.size] = d @ w_c
                if need_w:
                    if grad_w.dtype == dtype:
                        grad_w.addmm_(d.t(), h_c)
                    else:
                        grad_w += (d.t() @ h_c).to(grad_w.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None
