"""Output head and cross-entropy in one autograd node, for fp32 training on CPU.

    loss = CE(h W^T, y)        (the usual `F.cross_entropy(F.linear(h, W), y)`, which stays the reference
                                 this is tested against: same loss, same gradients)

Why a hand-written node: at SMALL sizes on a 2-core CPU the (B*T, V) = (1024, 50257) logits make head
plus loss about half of a training step. Written out, the same maths needs one elementwise pass over
the logits instead of several and lets the logits rows start on cache-line boundaries; measured
~65 ms less of an ~860 ms head (and 1.18x HF DeepseekV3ForCausalLM on the whole training step,
`python -m benchmarks.train`). The model's own forward stays the textbook head + `F.cross_entropy`; the
trainer passes this one in (`DeepSeekModel.forward(..., head_loss=...)`) only where it was measured:
fp32 on CPU without autocast or torch.compile (`head_loss_for`).

Shapes: N tokens, D model width, V vocab.
"""

from __future__ import annotations

import torch

from training.compile import is_compiled

LOGITS_ROW_ALIGN = 16       # floats: 64 bytes, one cache line / one AVX-512 register
UNDERFLOW_PROB = 1e-30      # below this, -log p is recomputed from the logits (fp32 normals end at 1.2e-38)


class HeadCrossEntropy(torch.autograd.Function):
    """logits = h W^T and CE = mean_n( logsumexp(logits_n) - logits_n[y_n] ), with the textbook gradient

        p = softmax(logits),   dCE/dlogits = (p - onehot(y)) / N,   dh = (p W - W[y]) / N,
        dW = (p^T h - scatter_y(h)) / N

    Same values as `F.cross_entropy(F.linear(h, W), y)`, written out for speed on CPU:
    1) each logits row starts on a 64-byte boundary: the (N, V) result is a view into a (N, V_pad)
       buffer. MKL's matmul into rows of the odd width 50257 ran ~20% slower than into aligned rows
       (1024 x 256 @ 256 x 50257 on one core: 298 vs 247 ms; the forward matmul is 1/3 of the head's
       FLOPs). The V_pad - V pad columns hold -inf, so their probability is exactly 0.
    2) ONE pass of elementwise work over the (N, V) logits in all: the forward keeps the softmax p
       (not the log-probabilities), the loss reads -log p at the N targets, and the backward feeds p
       straight into the two matmuls; the one-hot part of the gradient is subtracted from the small
       (N, D) and (V, D) results (a gather and a scatter of N rows), and the 1/N mean is applied to
       them too. Compared with log_softmax forward + softmax backward: ~65 ms less of an ~860 ms
       head at SMALL sizes on a 2-core CPU. The softmax kernel, unlike torch.exp, stays fast on
       results that underflow (a memorised batch has many; exp took 550 vs 44 ms on such values).
    3) -log p is exact while p is a normal float; a target whose p underflowed (its logit ~87+ below
       the row's log-sum-exp) gets logsumexp(row) - logit from the logits instead, for that row only.
    Shapes: N tokens, D model width, V vocab, V_pad = V rounded up to LOGITS_ROW_ALIGN.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        N, V = hidden.shape[0], weight.shape[0]
        V_pad = -(-V // LOGITS_ROW_ALIGN) * LOGITS_ROW_ALIGN
        padded = hidden.new_empty(N, V_pad)                                      # (N, V_pad)
        logits = padded[:, :V]                                                   # (N, V) aligned rows
        torch.mm(hidden, weight.t(), out=logits)                                 # logits = h W^T
        padded[:, V:] = float("-inf")
        probs = torch.softmax(padded, dim=-1)                                    # (N, V_pad), pads 0
        rows = torch.arange(N, device=hidden.device)
        target_probs = probs[rows, targets]                                      # (N,)
        nll = -torch.log(target_probs)                                           # (N,) -log p_y
        underflowed = target_probs < UNDERFLOW_PROB                              # (N,) rare
        if bool(underflowed.any()):
            lost = underflowed.nonzero()[:, 0]                                   # (n,)
            nll[lost] = torch.logsumexp(padded[lost], dim=-1) - logits[lost, targets[lost]]
        ctx.save_for_backward(hidden, weight, targets, probs)
        ctx.set_materialize_grads(False)
        return nll.mean(), logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        hidden, weight, targets, probs = ctx.saved_tensors
        N, V = hidden.shape[0], weight.shape[0]
        if grad_logits is not None:           # the logits were used beyond the loss: one dense gradient
            grad = grad_logits.clone()                                           # (N, V)
            if grad_loss is not None:
                scale = grad_loss / N
                grad += probs[:, :V] * scale
                grad[torch.arange(N, device=grad.device), targets] -= scale      # (p - onehot(y)) / N
            return grad @ weight, grad.t() @ hidden, None
        probs = probs[:, :V]                                                     # (N, V), pads dropped
        grad_hidden = (probs @ weight).sub_(weight[targets])                     # (N, D) = (p - onehot) W
        grad_weight = (probs.t() @ hidden).index_add_(0, targets, hidden, alpha=-1.0)   # (V, D)
        scale = grad_loss / N                                                    # the mean's 1/N
        return grad_hidden * scale, grad_weight * scale, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (N, D), weight (V, D), targets (N,) in [0, V) -> (mean CE (), logits (N, V)).

    The logits are a view with padded rows (row stride V_pad): `.view(-1, V)` and slicing work,
    flattening everything needs `.contiguous()` first.
    """
    return HeadCrossEntropy.apply(hidden, weight, targets)


def head_loss_for(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor):
    """`head_cross_entropy` where its speed-up was measured (fp32 weights on CPU, no autocast, plain class
    targets, not compiled), else None: the model's textbook head + F.cross_entropy. `model` as it is called
    (DDP / torch.compile wrappers allowed). Under torch.compile None too: the compiler fuses the textbook
    head + loss itself, and this node's data-dependent branch would break its graph (training/compile.py).
    Call it inside the autocast context, outside the compiled model."""
    if is_compiled(model):
        return None
    while isinstance(getattr(model, "module", None), torch.nn.Module):     # DDP(model) -> model
        model = model.module
    fits = (x.device.type == "cpu" and model.head.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and targets.numel() > 0 and int(targets.min()) >= 0)
    return head_cross_entropy if fits else None
