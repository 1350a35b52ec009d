"""Hidden cases for chapter 3 (the absorption trick).

3.1 absorb W_UK into the query, per head (what `MultiHeadLatentAttention._absorbed` does per call)
3.2 fold W_UV into W_O once, ahead of time (V2 §2.1.2: "W^UV can be absorbed into W^O")
3.3 fold W_UK into W_UQ once, ahead of time (V2 §2.1.2: "W^UK can be absorbed into W^UQ")
3.4 written: when the absorbed path pays off, and when it does not

Expected values come from `MultiHeadLatentAttention` itself: its naive scores q_nope . (W_UK c) from its
own weights, and its output. Every case uses more tokens than the latent has dimensions, so that a
wrong matrix cannot hide in directions the cached latents never span. The module's attention paths are
switched off while an answer runs (exercises/guard.py).
"""

from __future__ import annotations

import torch
from torch import nn

from components.multi_head_latent_attention import MultiHeadLatentAttention
from exercises import Exercise

# d, H, C, R, D, V with C, D, V all different, so a transposed or mis-split weight cannot pass by luck
SIZES = dict(d_model=40, n_heads=3, kv_latent_dim=20, rope_head_dim=6, qk_nope_head_dim=8, v_head_dim=10)
Q_LATENT = 24


def _make_mla(seed: int) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(**SIZES, q_latent_dim=Q_LATENT, max_positions=32).eval()


def _queries(mla: MultiHeadLatentAttention, x: torch.Tensor):
    """(c_q, q_nope (B, T, H, D), q_rope (B, T, H, R)) exactly as the module computes them."""
    B, T, _ = x.shape
    H, D, R = mla.n_heads, mla.qk_nope_head_dim, mla.rope_head_dim
    c_q = mla.q_norm(mla.w_dq(x))                                             # (B, T, Q)
    return c_q, mla.w_uq(c_q).view(B, T, H, D), mla.rope(mla.w_qr(c_q).view(B, T, H, R), 0)


def _shape_of(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


def _naive_scores(mla: MultiHeadLatentAttention, x: torch.Tensor):
    """(c_q, c_kv, scores (B, T, H, S)): the position-free part q_nope . k_nope of the module's scores,
    with keys decompressed by its own W_UK (the naive path), unscaled and unmasked."""
    B, T, _ = x.shape
    H, D = mla.n_heads, mla.qk_nope_head_dim
    c_q, q_nope, _ = _queries(mla, x)
    c_kv = mla.kv_norm(mla.w_dkv(x))                                          # (B, S, C)
    k_nope = mla.w_uk(c_kv).view(B, T, H, D)                                  # (B, S, H, D)
    return c_q, c_kv, torch.einsum("bthd,bshd->bths", q_nope, k_nope)


def check_absorb_query(student_fn) -> None:
    gen = torch.Generator().manual_seed(31)
    mla = _make_mla(1)
    H, C, T = 3, 20, 24                                                       # T > C: the latents span R^C
    x = torch.randn(2, T, 40, generator=gen)
    with torch.no_grad():
        _, q_nope, _ = _queries(mla, x)
        _, c_kv, naive = _naive_scores(mla, x)
        q_absorbed = student_fn(q_nope, mla.w_uk.weight, H)
        assert torch.is_tensor(q_absorbed) and q_absorbed.shape == (2, T, H, C), (
            f"expected q_absorbed of shape (B, T, H, C) = {(2, T, H, C)}, got {_shape_of(q_absorbed)}")
        absorbed = torch.einsum("bthc,bsc->bths", q_absorbed, c_kv)           # (W_UK^T q) . c
    assert torch.allclose(absorbed, naive, atol=1e-4, rtol=1e-4), (
        "q_absorbed . c_kv should equal q_nope . (W_UK c_kv) for every head and cached token; head h uses rows "
        "h*D:(h+1)*D of w_uk (view it as (H, D, C)) and q_absorbed_h = W_UK_h^T q_nope_h")


def _latent_averages(mla: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, T, H*C): each head's attention-weighted average of the cached latents, c_bar_h, measured by
    the library's own module: a twin with the same weights, except that its W_UV is the identity per
    head (V = C) and its W_O the identity, so that its output IS [c_bar_1; ...; c_bar_H]."""
    H, C = mla.n_heads, mla.kv_latent_dim
    twin = MultiHeadLatentAttention(**{**SIZES, "v_head_dim": C}, q_latent_dim=Q_LATENT, max_positions=32).eval()
    shared = {k: v for k, v in mla.state_dict().items() if not k.startswith(("w_uv.", "w_o."))}
    twin.load_state_dict(shared, strict=False)
    twin.w_uv.weight.data.copy_(torch.eye(C).repeat(H, 1))                    # (H*C, C): block h = I
    twin.w_o = nn.Identity()
    return twin(x)                                                            # (B, T, H*C)


def check_fold_wuv_into_wo(student_fn) -> None:
    gen = torch.Generator().manual_seed(32)
    mla = _make_mla(2)
    d, H, C, B, T = 40, 3, 20, 3, 24                                          # B*T > H*C averages
    x = torch.randn(B, T, d, generator=gen)
    with torch.no_grad():
        w_ov = student_fn(mla.w_uv.weight, mla.w_o.weight, H)
        assert torch.is_tensor(w_ov) and w_ov.shape == (d, H * C), (
            f"the folded matrix maps the H latents (H*C = {H * C} numbers) to d = {d}: expected shape "
            f"{(d, H * C)}, got {_shape_of(w_ov)}")
        got = _latent_averages(mla, x) @ w_ov.T                                # (B, T, d)
        expected = mla(x, absorb=True)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (
        "with your folded W_OV, [c_bar_1; ...; c_bar_H] @ W_OV.T does not reproduce MultiHeadLatentAttention's "
        "output; head h's block of columns is W_O[:, h*V:(h+1)*V] @ W_UV_h, with W_UV_h = w_uv rows h*V:(h+1)*V")


def check_fold_wuk_into_wuq(student_fn) -> None:
    gen = torch.Generator().manual_seed(33)
    mla = _make_mla(3)
    H, C, B, T = 3, 20, 2, 24                                                 # B*T > Q and T > C
    x = torch.randn(B, T, 40, generator=gen)
    with torch.no_grad():
        w_uqk = student_fn(mla.w_uq.weight, mla.w_uk.weight, H)
        assert torch.is_tensor(w_uqk) and w_uqk.shape == (H * C, Q_LATENT), (
            f"the folded matrix maps the query latent (Q = {Q_LATENT}) to H absorbed queries (H*C = {H * C}): "
            f"expected shape {(H * C, Q_LATENT)}, got {_shape_of(w_uqk)}")
        c_q, c_kv, naive = _naive_scores(mla, x)
        absorbed = torch.einsum("bthc,bsc->bths", (c_q @ w_uqk.T).view(B, T, H, C), c_kv)
    assert torch.allclose(absorbed, naive, atol=1e-4, rtol=1e-4), (
        "(c_q @ W_UQK.T), viewed (B, T, H, C), dotted with the cached latents should give q_nope . (W_UK c_kv) for "
        "every head: head h's block of rows is W_UK_h^T W_UQ_h, a (C, Q) matrix")


_ATTENTION_PATHS = (MultiHeadLatentAttention.forward, MultiHeadLatentAttention._naive,
                    MultiHeadLatentAttention._absorbed)

EXERCISES = {
    "3.1": Exercise("3.1", "absorb_query", 3, check_absorb_query, forbidden=_ATTENTION_PATHS,
                    why="write the per-head product W_UK_h^T q_h with a view and an einsum"),
    "3.2": Exercise("3.2", "fold_wuv_into_wo", 4, check_fold_wuv_into_wo, forbidden=_ATTENTION_PATHS,
                    why="multiply the weight blocks yourself"),
    "3.3": Exercise("3.3", "fold_wuk_into_wuq", 3, check_fold_wuk_into_wuq, forbidden=_ATTENTION_PATHS,
                    why="multiply the weight blocks yourself"),
    "3.4": Exercise("3.4", "answer_3_4", 2),
}
