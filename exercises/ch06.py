"""Hidden cases for chapter 6 (the full model and training).

6.1 `block_parameter_count(cfg, layer)`: the parameters of one TransformerBlock (MLA + norms + FFN), by formula.
6.2 `adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay)`: one AdamW update.
6.3 `lr_multiplier(step, warmup_steps, horizon, min_lr_ratio)`: linear warmup then cosine decay.
6.4 written: reading the training curves against ln V and the unigram model.

References: a real `TransformerBlock` built on the meta device (no memory), `torch.optim.AdamW` (the
optimizer `trainer.make_optimizer` builds) stepped on the same gradients, and `schedule.lr_at` itself
(as a multiple of the peak lr). The library functions an exercise asks for are switched off while
the answer runs (exercises/guard.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch.optim.adam import adam as functional_adam
from torch.optim.adamw import adamw as functional_adamw

import utils
from components.deepseek_model import DeepSeekModel
from components.expert import Expert
from components.moe import MoE
from components.multi_head_latent_attention import MultiHeadLatentAttention
from components.router import Router
from components.transformer_block import TransformerBlock, build_attention, build_moe
from constants import SMALL, TINY
from exercises import Exercise
from trainer import make_optimizer, train_step
from training.schedule import CosineSchedule, lr_at


# --- 6.1 ------------------------------------------------------------------------------------
def _block_reference(cfg, layer: int) -> int:
    with torch.device("meta"):
        block = TransformerBlock(cfg, layer)
    return sum(p.numel() for p in block.parameters())


def _describe(cfg, layer: int) -> str:
    cfg = cfg.resolved()
    return (f"layer {layer} of d_model={cfg.d_model}, n_heads={cfg.n_heads}, C={cfg.kv_latent_dim}, "
            f"q_latent_dim={cfg.q_latent_dim}, D={cfg.qk_nope_head_dim}, R={cfg.rope_head_dim}, V={cfg.v_head_dim}, "
            f"ffn={cfg.ffn!r}, n_dense_layers={cfg.n_dense_layers}, E={cfg.n_routed_experts}, "
            f"N_s={cfg.n_shared_experts}, I={cfg.expert_hidden_dim}, dense_hidden_dim={cfg.dense_hidden_dim}")


def _hint_6_1(cfg, layer: int, got: int, want: int) -> str:
    d, diff = cfg.d_model, want - got
    C, H = cfg.kv_latent_dim, cfg.n_heads
    moe = cfg.is_moe_layer(layer)
    if diff == 2 * d:
        return "did you forget the block's two RMSNorms (attn_norm and ffn_norm, d_model weights each)?"
    if diff in (C, C + (cfg.q_latent_dim or 0)) and diff:
        return "did you forget the RMSNorm weights inside MLA (kv_norm on c_KV, and q_norm on c_Q if present)?"
    if moe and diff == d * cfg.n_routed_experts:
        return "did you forget the router? it is a bias-free linear d_model -> E"
    if moe and diff == -cfg.n_routed_experts:
        return "the router's selection bias is a buffer (no gradient), not a parameter: do not count it"
    if moe and diff == 3 * d * cfg.expert_hidden_dim * cfg.n_shared_experts:
        return "did you forget the shared experts (N_s SwiGLU experts of width I, every token uses them)?"
    if cfg.q_latent_dim is not None and diff == (cfg.q_latent_dim - d) * H * cfg.resolved().rope_head_dim:
        return "with query compression, W_QR reads the query latent c_Q (q_latent_dim wide), not the input h"
    if not moe and diff % (3 * d) == 0:
        return ("a dense layer holds ONE SwiGLU FFN of width cfg.resolved().dense_hidden_dim "
                "(3 * d_model * width parameters)")
    return ("attention: W_DKV (d->C), kv_norm (C), W_KR (d->R), W_UK (C->H*D), W_UV (C->H*V), W_O (H*V->d), and "
            "the query matrices; FFN: dense SwiGLU, or router + (E + N_s) experts of 3*d*I")


def check_6_1(student_fn) -> None:
    cases = [
        (TINY, 0), (TINY, 1), (SMALL, 0), (SMALL, 3),
        (replace(TINY, q_latent_dim=32), 1),                                          # query compression
        (replace(SMALL, n_heads=8, kv_latent_dim=96, rope_head_dim=16, qk_nope_head_dim=48, v_head_dim=40), 2),
        (replace(TINY, ffn="dense"), 1),
        (replace(TINY, n_routed_experts=8, n_shared_experts=0, dense_hidden_dim=100, q_latent_dim=24), 0),
        (replace(TINY, n_routed_experts=8, n_shared_experts=2, expert_hidden_dim=48, q_latent_dim=24), 1),
    ]
    for cfg, layer in cases:
        want = _block_reference(cfg, layer)
        got = student_fn(cfg, layer)
        assert isinstance(got, (int, float)) or torch.is_tensor(got), \
            f"block_parameter_count must return a number, got {type(got).__name__}"
        got = int(got)
        if got != want:
            raise AssertionError(f"for {_describe(cfg, layer)}: expected {want:,} parameters, got {got:,}; "
                                 + _hint_6_1(cfg, layer, got, want))


# --- 6.2 ------------------------------------------------------------------------------------
def _as_update(result, shape, name="adamw_step"):
    assert isinstance(result, (tuple, list)) and len(result) == 3, \
        f"{name} must return (param, exp_avg, exp_avg_sq), got {type(result).__name__}"
    for label_, value in zip(("param", "exp_avg", "exp_avg_sq"), result, strict=True):
        assert torch.is_tensor(value) and tuple(value.shape) == tuple(shape), \
            f"{label_} should be a tensor of the parameter's shape {tuple(shape)}, got " \
            f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}"
    return [value.detach() for value in result]


def _probe_first_step(student_fn) -> None:
    """Step 1 from zero moments has a closed form: m_hat = g and v_hat = g^2, so the update is
    lr * g / (|g| + eps), and with g = 0 only the decay acts: p * (1 - lr * wd)."""
    p, g, zeros = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.3, -0.2, 1e-3]), torch.zeros(3)
    lr, betas, eps = 0.1, (0.9, 0.95), 1e-8
    param, _, _ = _as_update(student_fn(p.clone(), torch.zeros(3), zeros.clone(), zeros.clone(), 1, lr, betas, eps,
                                        0.5), (3,))
    if not torch.allclose(param, p * (1 - lr * 0.5), atol=1e-6):
        raise AssertionError("a zero gradient at step 1 (zero moments), lr=0.1, weight_decay=0.5: AdamW's decay is "
                             "DECOUPLED, p <- p * (1 - lr * weight_decay), applied to the weights, never added to the "
                             f"gradient; expected {(p * 0.95).tolist()}, got {param.tolist()}")
    param, m, v = _as_update(student_fn(p.clone(), g.clone(), zeros.clone(), zeros.clone(), 1, lr, betas, eps, 0.0),
                             (3,))
    want = p - lr * g / (g.abs() + eps)
    if not torch.allclose(param, want, atol=1e-5):
        if torch.allclose(param, p - lr * (1 - betas[0]) * g / ((1 - betas[1]) ** 0.5 * g.abs() + eps), atol=1e-5):
            raise AssertionError("at step 1 from zero moments the update should be lr * g / (|g| + eps): correct the "
                                 "bias of the moments, m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t), t = step")
        raise AssertionError("at step 1 from zero moments m_hat = g and v_hat = g^2, so the update is "
                             f"lr * g / (|g| + eps): expected {want.tolist()}, got {param.tolist()}")
    if not (torch.allclose(m, (1 - betas[0]) * g, atol=1e-7) and torch.allclose(v, (1 - betas[1]) * g * g, atol=1e-9)):
        raise AssertionError("return the moments themselves (m = beta1 m + (1 - beta1) g, v = beta2 v + "
                             "(1 - beta2) g^2), not their bias-corrected values")


def check_6_2(student_fn) -> None:
    _probe_first_step(student_fn)
    gen = torch.Generator().manual_seed(62)
    cases = [((4, 3), 1e-3, (0.9, 0.95), 1e-8, 0.1, 6),        # the trainer's betas and decay
             ((7,), 1e-2, (0.8, 0.99), 1e-6, 0.0, 5),          # no decay (norms, embeddings)
             ((2, 5), 3e-3, (0.9, 0.999), 1e-8, 0.3, 4)]
    for shape, lr, betas, eps, weight_decay, n_steps in cases:
        reference = torch.randn(shape, generator=gen).requires_grad_(True)
        optimizer = torch.optim.AdamW([reference], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        param = reference.detach().clone()
        exp_avg, exp_avg_sq = torch.zeros(shape), torch.zeros(shape)
        where = f"shape {shape}, lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
        for step in range(1, n_steps + 1):
            grad = torch.randn(shape, generator=gen) * (0.1 * step)
            reference.grad = grad.clone()
            optimizer.step()
            param, exp_avg, exp_avg_sq = _as_update(
                student_fn(param.clone(), grad.clone(), exp_avg.clone(), exp_avg_sq.clone(), step, lr, betas, eps,
                           weight_decay), shape)
            state = optimizer.state[reference]
            if not torch.allclose(exp_avg, state["exp_avg"], atol=1e-7, rtol=1e-5):
                raise AssertionError(f"{where}, step {step}: exp_avg should be beta1 * exp_avg + (1 - beta1) * grad")
            if not torch.allclose(exp_avg_sq, state["exp_avg_sq"], atol=1e-9, rtol=1e-5):
                raise AssertionError(f"{where}, step {step}: exp_avg_sq should be beta2 * exp_avg_sq + "
                                     "(1 - beta2) * grad^2")
            if not torch.allclose(param, reference.detach(), atol=1e-6, rtol=1e-5):
                raise AssertionError(
                    f"{where}, step {step}: the weights differ from torch.optim.AdamW's by up to "
                    f"{(param - reference.detach()).abs().max().item():.3g}: decay first, p <- p (1 - lr wd), then "
                    "p <- p - lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1^t), "
                    "v_hat = v / (1 - beta2^t)")


# --- 6.3 ------------------------------------------------------------------------------------
def check_6_3(student_fn) -> None:
    cases = [(10, 100, 0.1), (0, 50, 0.0), (5, None, 0.1), (100, 1000, 0.1), (3, 4, 0.5), (1, 1, 0.2)]
    for warmup, horizon, floor in cases:
        last = (horizon or 40) + 5
        for step in sorted(set(range(0, last)) | {last + 100}):
            want = lr_at(step, peak_lr=1.0, warmup_steps=warmup, horizon=horizon, min_lr_ratio=floor)
            got = float(student_fn(step, warmup, horizon, floor))
            if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                continue
            where = f"step={step}, warmup_steps={warmup}, horizon={horizon}, min_lr_ratio={floor}"
            hint = ""
            if step < warmup and math.isclose(got, step / warmup, abs_tol=1e-12):
                hint = "the first step already gets lr/W: the warmup factor is (step + 1) / warmup_steps"
            elif horizon is None:
                hint = "with no horizon (a pure time budget), the factor stays at 1.0 after warmup"
            elif step >= horizon:
                hint = "from the horizon on, the factor stays at min_lr_ratio"
            elif math.isclose(got, floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / horizon)),
                              abs_tol=1e-12):
                hint = "the cosine starts after warmup: progress = (step - W) / (horizon - W)"
            elif math.isclose(got, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, horizon - warmup))),
                              abs_tol=1e-12):
                hint = "the cosine decays to min_lr_ratio, not to 0: m + (1 - m) * (1 + cos(pi * progress)) / 2"
            raise AssertionError(f"{where}: expected {want:.6g}, got {got:.6g}" + (f"; {hint}" if hint else ""))


# Counting by building (or by the library's own counter) is what 6.1 asks to replace with a formula.
_BUILDERS = (TransformerBlock.__init__, MultiHeadLatentAttention.__init__, MoE.__init__, Expert.__init__,
             Router.__init__, DeepSeekModel.__init__, build_attention, build_moe,
             utils.parameter_count_from_config, utils.count_parameters, utils.count_active_parameters)
# Any torch optimizer (they all start in Optimizer.__init__) and the functional Adam/AdamW.
_OPTIMIZERS = (torch.optim.Optimizer.__init__, functional_adam, functional_adamw, make_optimizer, train_step)

EXERCISES = {
    "6.1": Exercise("6.1", "block_parameter_count", 4, check_6_1, forbidden=_BUILDERS,
                    why="count from the config fields alone, as the exercise asks (no module, no library counter)"),
    "6.2": Exercise("6.2", "adamw_step", 3, check_6_2, forbidden=_OPTIMIZERS,
                    why="write the moment updates, the bias correction and the decoupled decay with tensor operations"),
    "6.3": Exercise("6.3", "lr_multiplier", 3, check_6_3, forbidden=(lr_at, CosineSchedule.lr),
                    why="write the warmup and the cosine with math.cos yourself"),
    "6.4": Exercise("6.4", "answer_6_4", 2),
}
