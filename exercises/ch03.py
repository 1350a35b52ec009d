"""Hidden cases for chapter 3 (the absorption trick).

3.1 absorb W_UK into the query, per head (what `MultiHeadLatentAttention._absorbed` does per call)
3.2 fold W_UV into W_O once, ahead of time (V2 §2.1.2: "W^UV can be absorbed into W^O")
3.3 fold W_UK into W_UQ once, ahead of time (V2 §2.1.2: "W^UK can be absorbed into W^UQ")
References: the weights and outputs of `MultiHeadLatentAttention` itself.
"""

from __future__ import annotations

import torch

from components.multi_head_latent_attention import MultiHeadLatentAttention

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


def check_absorb_query(student_fn) -> None:
    gen = torch.Generator().manual_seed(31)
    mla = _make_mla(1)
    H, C, D = 3, 20, 8
    x = torch.randn(2, 5, 40, generator=gen)
    with torch.no_grad():
        _, q_nope, _ = _queries(mla, x)
        c_kv = mla.kv_norm(mla.w_dkv(x))                                      # (B, S, C)
        q_absorbed = student_fn(q_nope, mla.w_uk.weight, H)
        assert torch.is_tensor(q_absorbed) and q_absorbed.shape == (2, 5, H, C), (
            f"expected q_absorbed of shape (B, T, H, C) = {(2, 5, H, C)}, got {_shape_of(q_absorbed)}")
        k_nope = mla.w_uk(c_kv).view(2, 5, H, D)                              # the naive keys
        naive = torch.einsum("bthd,bshd->bths", q_nope, k_nope)               # q . (W_UK c)
        absorbed = torch.einsum("bthc,bsc->bths", q_absorbed, c_kv)           # (W_UK^T q) . c
    assert torch.allclose(absorbed, naive, atol=1e-5, rtol=1e-5), (
        "q_absorbed . c_kv should equal q_nope . (W_UK c_kv) for every head and cached token; head h uses rows "
        "h*D:(h+1)*D of w_uk (view it as (H, D, C)) and q_absorbed_h = W_UK_h^T q_nope_h")


def _absorbed_latent_output(mla: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """The module's absorbed path up to (but excluding) W_UV: attention-weighted latents (B, T, H, C)."""
    B, T, _ = x.shape
    H, D, C = mla.n_heads, mla.qk_nope_head_dim, mla.kv_latent_dim
    _, q_nope, q_rope = _queries(mla, x)
    c_kv, k_rope = mla.kv_norm(mla.w_dkv(x)), mla.rope(mla.w_kr(x), 0)
    q_absorbed = torch.einsum("bthd,hdc->bthc", q_nope, mla.w_uk.weight.view(H, D, C))
    scores = (torch.einsum("bthc,bsc->bths", q_absorbed, c_kv)
              + torch.einsum("bthr,bsr->bths", q_rope, k_rope)) * mla.scale
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future[:, None, :], float("-inf")).softmax(-1)
    return torch.einsum("bths,bsc->bthc", probs, c_kv)                        # (B, T, H, C)


def check_fold_wuv_into_wo(student_fn) -> None:
    gen = torch.Generator().manual_seed(32)
    mla = _make_mla(2)
    d, H, C = 40, 3, 20
    x = torch.randn(2, 6, d, generator=gen)
    with torch.no_grad():
        w_ov = student_fn(mla.w_uv.weight, mla.w_o.weight, H)
        assert torch.is_tensor(w_ov) and w_ov.shape == (d, H * C), (
            f"the folded matrix maps the H latents (H*C = {H * C} numbers) to d = {d}: expected shape "
            f"{(d, H * C)}, got {_shape_of(w_ov)}")
        out_latent = _absorbed_latent_output(mla, x)                          # (B, T, H, C)
        got = out_latent.reshape(2, 6, H * C) @ w_ov.T                         # (B, T, d)
        expected = mla(x, absorb=True)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (
        "with your folded W_OV, out_latent.flatten(-2) @ W_OV.T does not reproduce MultiHeadLatentAttention's "
        "output; head h's block of columns is W_O[:, h*V:(h+1)*V] @ W_UV_h, with W_UV_h = w_uv rows h*V:(h+1)*V")


def check_fold_wuk_into_wuq(student_fn) -> None:
    gen = torch.Generator().manual_seed(33)
    mla = _make_mla(3)
    H, C, D = 3, 20, 8
    x = torch.randn(2, 5, 40, generator=gen)
    with torch.no_grad():
        w_uqk = student_fn(mla.w_uq.weight, mla.w_uk.weight, H)
        assert torch.is_tensor(w_uqk) and w_uqk.shape == (H * C, Q_LATENT), (
            f"the folded matrix maps the query latent (Q = {Q_LATENT}) to H absorbed queries (H*C = {H * C}): "
            f"expected shape {(H * C, Q_LATENT)}, got {_shape_of(w_uqk)}")
        c_q, q_nope, _ = _queries(mla, x)
        expected = torch.einsum("bthd,hdc->bthc", q_nope, mla.w_uk.weight.view(H, D, C))   # (B, T, H, C)
        got = (c_q @ w_uqk.T).view(2, 5, H, C)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (
        "c_q @ W_UQK.T (viewed (B, T, H, C)) should equal W_UK_h^T q_nope_h for every head: head h's block of "
        "rows is W_UK_h^T W_UQ_h, a (C, Q) matrix")


CHECKS = {"3.1": check_absorb_query, "3.2": check_fold_wuv_into_wo, "3.3": check_fold_wuk_into_wuq}
