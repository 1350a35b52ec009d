"""Hidden cases for chapter 2 (Multi-Head Latent Attention).

2.1 what the MLA cache holds for T new tokens at positions start.. (the latent and the rotated shared key)
2.2 the latent down-projection, its RMSNorm, and the up-projections to keys and values
2.3 attention scores with the decoupled RoPE key shared by all heads
2.4 written: why RoPE has to be decoupled

Expected values come from `MultiHeadLatentAttention` itself (its cache after a real forward, its
submodules, its output); hints come from probes whose right output is known in closed form. The
module's forward is switched off while an answer runs (exercises/guard.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from components.attention import causal_mask
from components.kv_cache import LayerCache
from components.multi_head_latent_attention import MultiHeadLatentAttention
from exercises import Exercise


def _shape(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


def _make_mla(seed: int, q_latent_dim: int | None = 24) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    mla = MultiHeadLatentAttention(d_model=48, n_heads=3, kv_latent_dim=20, rope_head_dim=8, qk_nope_head_dim=12,
                                   v_head_dim=10, q_latent_dim=q_latent_dim, max_positions=32)
    with torch.no_grad():
        mla.kv_norm.weight.uniform_(0.5, 1.5)     # non-unit weights, so a missing norm weight shows
    return mla.eval()


# --- 2.1 ------------------------------------------------------------------------------------
def _held(mla: MultiHeadLatentAttention, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the module's own cache holds after a forward over x: c_kv (B, S, C) and k_rope (B, S, R)."""
    cache = LayerCache()
    mla(x, cache=cache)
    return cache.tensors()


def check_cache_entries(student_fn) -> None:
    gen = torch.Generator().manual_seed(21)
    for seed, (B, start, T, q_latent) in enumerate([(1, 0, 5, 24), (2, 4, 3, None), (2, 9, 1, 24)]):
        mla = _make_mla(20 + seed, q_latent)
        x = torch.randn(B, start + T, 48, generator=gen)
        with torch.no_grad():
            held = _held(mla, x)
            want_c, want_r = held["c_kv"][:, start:], held["k_rope"][:, start:]      # the T new tokens
            got = student_fn(mla, x[:, start:].clone(), start)
        assert isinstance(got, (tuple, list)) and len(got) == 2, "return the pair (c_kv, k_rope)"
        c_kv, k_rope = got
        where = f"{T} tokens at positions {start}..{start + T - 1}"
        assert torch.is_tensor(c_kv) and tuple(c_kv.shape) == (B, T, 20), \
            f"{where}: c_kv should be (B, T, C) = {(B, T, 20)}, got {_shape(c_kv)}"
        if torch.is_tensor(k_rope) and k_rope.dim() == 4:
            raise AssertionError(f"{where}: k_rope has a head axis {_shape(k_rope)}; MLA caches ONE RoPE key per "
                                 "token, shared by all heads: (B, T, R)")
        assert torch.is_tensor(k_rope) and tuple(k_rope.shape) == (B, T, 8), \
            f"{where}: k_rope should be (B, T, R) = {(B, T, 8)}, got {_shape(k_rope)}"
        with torch.no_grad():
            if not torch.allclose(c_kv, want_c, atol=1e-5, rtol=1e-5):
                if torch.allclose(c_kv, mla.w_dkv(x[:, start:]), atol=1e-5, rtol=1e-5):
                    raise AssertionError(f"{where}: the cache keeps the NORMALISED latent kv_norm(W_DKV h) (eq 9), "
                                         "not the raw down-projection")
                raise AssertionError(f"{where}: c_kv differs from what MultiHeadLatentAttention caches; "
                                     f"max abs error {(c_kv - want_c).abs().max().item():.3g}")
            if not torch.allclose(k_rope, want_r, atol=1e-5, rtol=1e-5):
                if torch.allclose(k_rope, mla.w_kr(x[:, start:]), atol=1e-5, rtol=1e-5):
                    raise AssertionError(f"{where}: the cached RoPE key is ROTATED at its position (eq 15): "
                                         "rotate W_KR h with mla.rope before caching")
                if start and torch.allclose(k_rope, _held(mla, x[:, start:])["k_rope"], atol=1e-5, rtol=1e-5):
                    raise AssertionError(f"{where}: you rotated at positions 0..{T - 1}; the new tokens sit "
                                         f"after the {start} cached ones: mla.rope(..., start)")
                raise AssertionError(f"{where}: k_rope differs from what MultiHeadLatentAttention caches; "
                                     f"max abs error {(k_rope - want_r).abs().max().item():.3g}")


# --- 2.2 ------------------------------------------------------------------------------------
def check_latent_kv(student_fn) -> None:
    gen = torch.Generator().manual_seed(21)
    mla = _make_mla(3)
    H, C, D, V = 3, 20, 12, 10
    for B, T in [(1, 1), (2, 5)]:
        x = 3.0 * torch.randn(B, T, 48, generator=gen)
        with torch.no_grad():
            c_ref = _held(mla, x)["c_kv"]                                       # (B, T, C), as the module caches it
            k_ref = mla.w_uk(c_ref).view(B, T, H, D)
            v_ref = mla.w_uv(c_ref).view(B, T, H, V)
            got = student_fn(x, mla.w_dkv.weight, mla.kv_norm.weight, mla.w_uk.weight, mla.w_uv.weight, H, 1e-6)
        assert isinstance(got, (tuple, list)) and len(got) == 3, "return the triple (c_kv, k_nope, v)"
        c_kv, k_nope, v = got
        for name, value, shape in [("c_kv", c_kv, (B, T, C)), ("k_nope", k_nope, (B, T, H, D)), ("v", v, (B, T, H, V))]:
            assert torch.is_tensor(value) and tuple(value.shape) == shape, \
                f"{name} should have shape {shape}, got {_shape(value)}"
        if not torch.allclose(c_kv, c_ref, atol=1e-5, rtol=1e-5):
            with torch.no_grad():
                raw = mla.w_dkv(x)
                unweighted = F.rms_norm(raw, (C,), eps=1e-6)
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


# --- 2.3 ------------------------------------------------------------------------------------
def _probe_scale(student_fn) -> None:
    """One query, one key: content part q_nope . k_nope = D (all ones), RoPE part q_rope . k_rope = R."""
    D, R = 4, 2
    ones = torch.ones
    content = student_fn(ones(1, 1, 1, D), torch.zeros(1, 1, 1, R), ones(1, 1, 1, D), torch.zeros(1, 1, R))
    assert torch.is_tensor(content) and content.shape == (1, 1, 1, 1), \
        f"one query and one key of one head: expected scores (1, 1, 1, 1), got {_shape(content)}"
    got = content.item()
    if not math.isclose(got, D / math.sqrt(D + R), rel_tol=1e-5):
        if math.isclose(got, D / math.sqrt(D), rel_tol=1e-5):
            raise AssertionError("scale by 1/sqrt(D + R), the full q/k head size (V2 eq 18), not 1/sqrt(D)")
        if math.isclose(got, D, rel_tol=1e-5):
            raise AssertionError("scale the scores by 1/sqrt(D + R) (V2 eq 18)")
        raise AssertionError(f"q_nope = k_nope = ones(D={D}), no RoPE part: expected the score "
                             f"D / sqrt(D + R) = {D / math.sqrt(D + R):.4f}, got {got:.4f}")
    position = student_fn(torch.zeros(1, 1, 2, D), ones(1, 1, 2, R), torch.zeros(1, 1, 2, D), ones(1, 1, R))
    if not (torch.is_tensor(position) and position.shape == (1, 2, 1, 1)
            and torch.allclose(position, torch.full((1, 2, 1, 1), R / math.sqrt(D + R)), rtol=1e-5)):
        raise AssertionError("q_rope = ones(R), the shared k_rope = ones(R), no content part: every head should "
                             f"score R / sqrt(D + R) = {R / math.sqrt(D + R):.4f}; add q_rope . k_rope, the ONE "
                             "key (B, S, R) broadcast over the heads")


def check_mla_scores(student_fn) -> None:
    gen = torch.Generator().manual_seed(23)
    _probe_scale(student_fn)
    # 1) inside the real module: scores -> softmax -> values -> W_O must equal MultiHeadLatentAttention(x)
    for q_latent_dim in (24, None):
        mla = _make_mla(5, q_latent_dim)
        x = torch.randn(2, 6, 48, generator=gen)
        B, T, H, D, R, V = 2, 6, 3, 12, 8, 10
        with torch.no_grad():
            c_q, w_nope = (x, mla.w_q) if q_latent_dim is None else (mla.q_norm(mla.w_dq(x)), mla.w_uq)
            q_nope = w_nope(c_q).view(B, T, H, D)                               # (B, T, H, D)
            q_rope = mla.rope(mla.w_qr(c_q).view(B, T, H, R), 0)               # (B, T, H, R)
            held = _held(mla, x)                                                # what the module caches
            c_kv, k_rope = held["c_kv"], held["k_rope"]                         # (B, S, C), (B, S, R)
            k_nope = mla.w_uk(c_kv).view(B, T, H, D)                            # (B, S, H, D)
            v = mla.w_uv(c_kv).view(B, T, H, V)
            scores = student_fn(q_nope, q_rope, k_nope, k_rope)
            assert torch.is_tensor(scores) and scores.shape == (B, H, T, T), (
                f"scores should be (B, H, T, S) = {(B, H, T, T)}, got {_shape(scores)}")
            assert torch.isinf(scores).sum() > 0, "mask the future with -inf before returning the scores"
            out = torch.einsum("bhts,bshv->bthv", scores.softmax(-1), v).reshape(B, T, H * V)
            assert torch.allclose(mla.w_o(out), mla(x), atol=1e-5, rtol=1e-5), (
                "inside MultiHeadLatentAttention your scores do not reproduce its output; "
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


_MODULE_PATHS = (MultiHeadLatentAttention.forward, MultiHeadLatentAttention._naive,
                 MultiHeadLatentAttention._absorbed)

EXERCISES = {
    "2.1": Exercise("2.1", "mla_cache_entries", 3, check_cache_entries,
                    forbidden=(*_MODULE_PATHS, LayerCache.append),
                    why="compute the two cached tensors from mla's submodules (w_dkv, kv_norm, w_kr, rope)"),
    "2.2": Exercise("2.2", "latent_kv", 3, check_latent_kv,
                    forbidden=(*_MODULE_PATHS, nn.RMSNorm.forward, F.rms_norm),
                    why="write the RMSNorm and the projections with plain tensor operations"),
    "2.3": Exercise("2.3", "mla_scores", 4, check_mla_scores, forbidden=_MODULE_PATHS,
                    why="compute the two dot products, the scale and the mask yourself"),
    "2.4": Exercise("2.4", "answer_2_4", 2),
}
