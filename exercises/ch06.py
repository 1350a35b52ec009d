"""Hidden cases for chapter 6 (the full model and training).

6.1 `block_parameter_count(cfg, layer)`: the parameters of one TransformerBlock (MLA + norms + FFN), by formula.
6.2 `perplexity_and_bits(losses, n_tokens)`: perplexity and bits per token from per-batch mean losses.
6.3 `lr_multiplier(step, warmup_steps, horizon, min_lr_ratio)`: linear warmup then cosine decay.

References: a real `TransformerBlock` built on the meta device (no memory), the token-weighted mean
that `Trainer.evaluate` computes, and `schedule.lr_at` itself (as a multiple of the peak lr).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from components.transformer_block import TransformerBlock
from constants import SMALL, TINY
from schedule import lr_at


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
    d, H, C = cfg.d_model, cfg.n_heads, cfg.kv_latent_dim
    diff = want - got
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
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def check_6_2(student_fn) -> None:
    cases = [
        ([math.log(50257)], [1024]),                  # a uniform guess over GPT-2's vocabulary: ppl = V
        ([2.0, 2.0, 2.0], [10, 20, 30]),
        ([3.0, 5.0], [3000, 1000]),                   # the token weights matter here
        ([4.5, 4.0, 3.2, 6.1], [512, 512, 512, 100]),  # a short last batch, as eval_batches may yield
        ([0.0], [7]),
    ]
    for losses, n_tokens in cases:
        result = student_fn(list(losses), list(n_tokens))
        assert isinstance(result, (tuple, list)) and len(result) == 2, \
            f"perplexity_and_bits must return a pair (perplexity, bits_per_token), got {result!r}"
        ppl, bits = (float(v) for v in result)
        mean = sum(loss * n for loss, n in zip(losses, n_tokens, strict=True)) / sum(n_tokens)
        want_ppl, want_bits = math.exp(mean), mean / math.log(2)
        if _close(ppl, want_ppl) and _close(bits, want_bits):
            continue
        plain = sum(losses) / len(losses)
        mean_of_ppl = sum(math.exp(loss) for loss in losses) / len(losses)
        where = f"losses={losses}, n_tokens={n_tokens}"
        if _close(ppl, math.exp(plain)) and not _close(plain, mean):
            raise AssertionError(f"{where}: each batch's loss is a mean over its own tokens; weight it by "
                                 "n_tokens before averaging (every TOKEN counts once, not every batch)")
        if _close(ppl, mean_of_ppl) and not _close(mean_of_ppl, want_ppl):
            raise AssertionError(f"{where}: average the LOSSES (token-weighted), then exponentiate once; "
                                 "the mean of per-batch perplexities is not the perplexity")
        if _close(ppl, 2 ** mean):
            raise AssertionError(f"{where}: the losses are in nats (natural log), so perplexity = exp(mean loss)")
        if _close(ppl, want_ppl) and _close(bits, mean):
            raise AssertionError(f"{where}: bits = nats / ln 2 (the loss is in nats)")
        if _close(ppl, want_ppl):
            raise AssertionError(f"{where}: perplexity right, bits per token wrong: expected {want_bits:.6g}, "
                                 f"got {bits:.6g}")
        raise AssertionError(f"{where}: expected perplexity {want_ppl:.6g}, got {ppl:.6g}")


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


CHECKS = {"6.1": check_6_1, "6.2": check_6_2, "6.3": check_6_3}
