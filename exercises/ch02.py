"""Hidden cases for chapter 2 (Multi-Head Latent Attention).

2.1 MLA vs MHA cache bytes per token (DeepSeek-V3's sizes among the cases)
2.2 the latent down-projection, its RMSNorm, and the up-projections to keys and values
2.3 attention scores with the decoupled RoPE key shared by all heads
References: `utils` counting helpers and `MultiHeadLatentAttention` itself.
"""

from __future__ import annotations

import torch

import utils
from components.attention import causal_mask
from components.config import ModelConfig
from components.multi_head_latent_attention import MultiHeadLatentAttention


def check_mla_vs_mha_cache(student_fn) -> None:
    cases = [  # n_heads, head_dim, kv_latent_dim, rope_head_dim, n_layers, bytes_per_value
        (128, 128, 512, 64, 61, 2),    # DeepSeek-V3: 70,272 vs 3,997,696 bytes per token
        (16, 128, 512, 64, 27, 2),     # DeepSeek-V2-Lite
        (8, 64, 128, 32, 8, 2),        # docs/maths.md §1.7, worked example
        (4, 16, 16, 8, 2, 4),          # TINY in fp32
    ]
    for H, D, C, R, L, nbytes in cases:
        cfg = ModelConfig(d_model=H * D, n_heads=H, n_layers=L, kv_latent_dim=C, rope_head_dim=R, attention="mla")
        mla = utils.kv_cache_bytes_per_token(cfg, bytes_per_value=nbytes)
        mha = utils.kv_cache_bytes_per_token(ModelConfig(d_model=H * D, n_heads=H, n_layers=L, attention="mha"),
                                             bytes_per_value=nbytes)
        args = (f"mla_vs_mha_cache(n_heads={H}, head_dim={D}, kv_latent_dim={C}, rope_head_dim={R}, "
                f"n_layers={L}, bytes_per_value={nbytes})")
        got = student_fn(H, D, C, R, L, nbytes)
        assert isinstance(got, (tuple, list)) and len(got) == 2, f"{args} should return a pair (mla, mha)"
        got_mla, got_mha = got
        if got_mla == C * L * nbytes:
            raise AssertionError(f"{args}: MLA also caches the decoupled RoPE key, C + R numbers per token per layer")
        if got_mla == H * (C + R) * L * nbytes:
            raise AssertionError(f"{args}: the latent and the RoPE key are shared by all heads; do not multiply by H")
        assert got_mla == mla, f"{args}: MLA bytes per token {got_mla}, expected {mla}"
        if got_mha == mha // 2:
            raise AssertionError(f"{args}: MHA caches K AND V, 2 * n_heads * head_dim numbers per token per layer")
        assert got_mha == mha, f"{args}: MHA bytes per token {got_mha}, expected {mha}"


def _make_mla(seed: int, q_latent_dim: int | None = 24) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    mla = MultiHeadLatentAttention(d_model=48, n_heads=3, kv_latent_dim=20, rope_head_dim=8, qk_nope_head_dim=12,
                                   v_head_dim=10, q_latent_dim=q_latent_dim, max_positions=32)
    with torch.no_grad():
        mla.kv_norm.weight.uniform_(0.5, 1.5)     # non-unit weights, so a missing norm weight shows
    return mla.eval()


def check_latent_kv(student_fn) -> None:
    gen = torch.Generator().manual_seed(21)
    mla = _make_mla(3)
    H, C, D, V = 3, 20, 12, 10
    for B, T in [(1, 1), (2, 5)]:
        x = 3.0 * torch.randn(B, T, 48, generator=gen)
        with torch.no_grad():
            c_ref = mla.kv_norm(mla.w_dkv(x))                                   # (B, T, C)
            k_ref = mla.w_uk(c_ref).view(B, T, H, D)
            v_ref = mla.w_uv(c_ref).view(B, T, H, V)
            got = student_fn(x, mla.w_dkv.weight, mla.kv_norm.weight, mla.w_uk.weight, mla.w_uv.weight, H, 1e-6)
        assert isinstance(got, (tuple, list)) and len(got) == 3, "return the triple (c_kv, k_nope, v)"
        c_kv, k_nope, v = got
        for name, value, shape in [("c_kv", c_kv, (B, T, C)), ("k_nope", k_nope, (B, T, H, D)), ("v", v, (B, T, H, V))]:
            assert torch.is_tensor(value) and tuple(value.shape) == shape, (
                f"{name} should have shape {shape}, got {tuple(value.shape) if torch.is_tensor(value) else value}")
        if not torch.allclose(c_kv, c_ref, atol=1e-5, rtol=1e-5):
            raw = x @ mla.w_dkv.weight.T
            unweighted = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-6)
            if torch.allclose(c_kv, raw, atol=1e-5, rtol=1e-5):
                raise AssertionError("c_kv must be RMS-normalised after the down-projection (kv_norm, V2 §2.1 / "
                                     "docs/maths.md §1.2): the cache keeps the normalised latent")
            if torch.allclose(c_kv, unweighted, atol=1e-5, rtol=1e-5):
                raise AssertionError("RMSNorm has a learned weight: multiply the normalised latent by kv_norm_weight")
            raise AssertionError(f"c_kv is wrong: max abs error {(c_kv - c_ref).abs().max().item():.3g} "
                                 "(RMSNorm: x / sqrt(mean(x^2) + eps) * weight, no mean subtraction)")
        assert torch.allclose(k_nope, k_ref, atol=1e-5, rtol=1e-5), (
            "k_nope is wrong: k_nope = W_UK c_kv, viewed per head as (B, T, H, D) (nn.Linear weights are (out, in))")
        assert torch.allclose(v, v_ref, atol=1e-5, rtol=1e-5), "v is wrong: v = W_UV c_kv, viewed as (B, T, H, V)"


def check_mla_scores(student_fn) -> None:
    gen = torch.Generator().manual_seed(23)
    # 1) inside the real module: scores -> softmax -> values -> W_O must equal MultiHeadLatentAttention(x)
    for q_latent_dim in (24, None):
        mla = _make_mla(5, q_latent_dim)
        x = torch.randn(2, 6, 48, generator=gen)
        B, T, H, D, R, V = 2, 6, 3, 12, 8, 10
        with torch.no_grad():
            c_q, w_nope = (x, mla.w_q) if q_latent_dim is None else (mla.q_norm(mla.w_dq(x)), mla.w_uq)
            q_nope = w_nope(c_q).view(B, T, H, D)                               # (B, T, H, D)
            q_rope = mla.rope(mla.w_qr(c_q).view(B, T, H, R), 0)               # (B, T, H, R)
            c_kv = mla.kv_norm(mla.w_dkv(x))
            k_nope = mla.w_uk(c_kv).view(B, T, H, D)                            # (B, S, H, D)
            k_rope = mla.rope(mla.w_kr(x), 0)                                   # (B, S, R)
            v = mla.w_uv(c_kv).view(B, T, H, V)
            scores = student_fn(q_nope, q_rope, k_nope, k_rope)
            assert torch.is_tensor(scores) and scores.shape == (B, H, T, T), (
                f"scores should be (B, H, T, S) = {(B, H, T, T)}, got "
                f"{tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__}")
            assert torch.isinf(scores).sum() > 0, "mask the future with -inf before returning the scores"
            out = torch.einsum("bhts,bshv->bthv", scores.softmax(-1), v).reshape(B, T, H * V)
            expected = mla(x)
            if not torch.allclose(mla.w_o(out), expected, atol=1e-5, rtol=1e-5):
                ref = (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
                       + torch.einsum("bthr,bsr->bhts", q_rope, k_rope))          # (B, H, T, S) unscaled
                finite = torch.isfinite(scores)
                for wrong, hint in [(D ** -0.5, "scale by 1/sqrt(D + R), the full q/k head size (V2 eq 18), "
                                                "not 1/sqrt(D)"),
                                    (1.0, "scale the scores by 1/sqrt(D + R) (V2 eq 18)")]:
                    if torch.allclose(scores[finite], (ref * wrong)[finite], atol=1e-5, rtol=1e-5):
                        raise AssertionError(hint)
                raise AssertionError("inside MultiHeadLatentAttention your scores do not reproduce its output; "
                                     "score = (q_nope . k_nope + q_rope . k_rope) / sqrt(D + R), future masked")
    # 2) T new tokens after cached ones: the mask must be offset
    B, T, S, H, D, R = 1, 3, 7, 2, 4, 2
    q_nope, q_rope = torch.randn(B, T, H, D, generator=gen), torch.randn(B, T, H, R, generator=gen)
    k_nope, k_rope = torch.randn(B, S, H, D, generator=gen), torch.randn(B, S, R, generator=gen)
    scores = student_fn(q_nope, q_rope, k_nope, k_rope)
    assert scores.shape == (B, H, T, S), f"with T={T} queries and S={S} keys expect {(B, H, T, S)}"
    allowed = causal_mask(T, S)                                                  # (T, S)
    assert torch.equal(torch.isfinite(scores[0, 0]), allowed), (
        f"with {T} new queries after {S - T} cached tokens, query i sits at position {S - T} + i: "
        f"expected finite scores where\n{allowed.int()}")


CHECKS = {"2.1": check_mla_vs_mha_cache, "2.2": check_latent_kv, "2.3": check_mla_scores}
