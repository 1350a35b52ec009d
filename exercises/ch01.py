"""Hidden cases for chapter 1 (attention and the KV cache).

1.1 a causal mask for T new tokens after S - T cached ones
1.2 KV-cache bytes of grouped-query attention
1.3 one decode step of GQA attention over a cache
The references are the library itself (`components.attention`, `utils`), so a passing answer
agrees with the code the later chapters run.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

import utils
from components.attention import CausalSelfAttention
from components.kv_cache import LayerCache
from constants import TINY


def _expected_mask(T: int, S: int) -> torch.Tensor:
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)   # (T, S)


def check_causal_mask(student_fn) -> None:
    for T, S in [(4, 4), (1, 1), (1, 6), (2, 5), (3, 7), (6, 6)]:
        got = student_fn(T, S)
        assert torch.is_tensor(got), f"my_causal_mask({T}, {S}) should return a tensor, got {type(got).__name__}"
        assert got.shape == (T, S), f"my_causal_mask({T}, {S}) has shape {tuple(got.shape)}, expected ({T}, {S})"
        assert got.dtype == torch.bool, f"return a bool tensor (True = may look), got {got.dtype}"
        expected = _expected_mask(T, S)
        if not torch.equal(got, expected):
            if T < S and torch.equal(got, torch.ones(T, S, dtype=torch.bool).tril()):
                raise AssertionError(
                    f"my_causal_mask({T}, {S}): the {T} new tokens are the LAST {T} of {S}; query i sits at "
                    f"position {S - T} + i, so it sees keys j <= {S - T} + i (shift the diagonal)")
            if torch.equal(got, ~expected):
                raise AssertionError("True must mean 'may look' (the past and itself); your mask is inverted")
            raise AssertionError(f"my_causal_mask({T}, {S}) is wrong; expected\n{expected.int()}\ngot\n{got.int()}")


def check_gqa_cache_bytes(student_fn) -> None:
    cases = [  # (d_model, n_heads, n_kv_heads, n_layers, n_tokens, batch, bytes_per_value)
        (64, 4, 2, 2, 100, 1, 2),
        (64, 4, 4, 2, 64, 3, 4),         # n_kv_heads == n_heads: MHA
        (64, 4, 1, 2, 64, 1, 2),         # one kv head: MQA
        (512, 8, 4, 8, 1024, 1, 2),      # docs/maths.md §1.7, worked example: 8.0 MiB
        (4096, 32, 8, 32, 8192, 4, 2),   # a Llama-2-70B-like layer stack
    ]
    for d_model, n_heads, n_kv, n_layers, n_tokens, batch, nbytes in cases:
        cfg = replace(TINY, d_model=d_model, n_heads=n_heads, attention="gqa", n_kv_heads=n_kv, n_layers=n_layers,
                      n_dense_layers=1)
        head_dim = d_model // n_heads
        expected = utils.kv_cache_bytes(cfg, n_tokens, batch=batch, bytes_per_value=nbytes)
        got = student_fn(n_layers, n_kv, head_dim, n_tokens, batch, nbytes)
        args = (f"gqa_cache_bytes(n_layers={n_layers}, n_kv_heads={n_kv}, head_dim={head_dim}, "
                f"n_tokens={n_tokens}, batch={batch}, bytes_per_value={nbytes})")
        if got == expected // 2:
            raise AssertionError(f"{args} = {got}, half the answer: the cache holds K AND V for every kv head")
        if got == expected * n_heads // n_kv and n_heads != n_kv:
            raise AssertionError(f"{args}: count only the n_kv_heads key/value heads, not all query heads")
        assert got == expected, f"{args} returned {got}, expected {expected} bytes"


def _reference_decode(q, k_cache, v_cache):
    H, G = q.shape[1], k_cache.shape[2]
    k = k_cache.transpose(1, 2).repeat_interleave(H // G, dim=1)             # (B, H, S, D)
    v = v_cache.transpose(1, 2).repeat_interleave(H // G, dim=1)             # (B, H, S, D)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v).squeeze(2)   # (B, H, D)


def check_gqa_decode_step(student_fn) -> None:
    gen = torch.Generator().manual_seed(11)
    # 1) random tensors, several head groupings
    for B, H, G, S, D in [(1, 4, 4, 5, 8), (2, 4, 2, 7, 8), (2, 6, 3, 1, 4), (3, 8, 1, 9, 16)]:
        q = torch.randn(B, H, D, generator=gen)
        k_cache, v_cache = torch.randn(B, S, G, D, generator=gen), torch.randn(B, S, G, D, generator=gen)
        got = student_fn(q, k_cache, v_cache)
        assert torch.is_tensor(got) and got.shape == (B, H, D), (
            f"expected shape {(B, H, D)} for q {tuple(q.shape)} and a cache {tuple(k_cache.shape)}, "
            f"got {tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        expected = _reference_decode(q, k_cache, v_cache)
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            tiled = F.scaled_dot_product_attention(
                q.unsqueeze(2), k_cache.transpose(1, 2).repeat(1, H // G, 1, 1),
                v_cache.transpose(1, 2).repeat(1, H // G, 1, 1)).squeeze(2)
            if G not in (1, H) and torch.allclose(got, tiled, atol=1e-5, rtol=1e-5):
                raise AssertionError("wrong head grouping: query head h reads kv head h // (H/G) "
                                     "(repeat_interleave), not h % G (repeat)")
            unscaled = F.scaled_dot_product_attention(
                q.unsqueeze(2), k_cache.transpose(1, 2).repeat_interleave(H // G, 1),
                v_cache.transpose(1, 2).repeat_interleave(H // G, 1), scale=1.0).squeeze(2)
            if torch.allclose(got, unscaled, atol=1e-5, rtol=1e-5):
                raise AssertionError("scale the scores by 1/sqrt(D) before the softmax")
            raise AssertionError(f"wrong output for B={B}, H={H}, G={G}, S={S}, D={D}: "
                                 f"max abs error {(got - expected).abs().max().item():.3g}")
    # 2) inside the real module: prefill 6 tokens, then the 7th through your function
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, 2, max_positions=16).eval()
    x = torch.randn(1, 7, 32, generator=gen)
    with torch.no_grad():
        full = attn(x)                                                      # (1, 7, 32)
        cache = LayerCache()
        attn(x[:, :6], cache=cache)
        x_new = x[:, 6:]
        q = attn.rope(attn.w_q(x_new).view(1, 1, 4, 8), 6)[:, 0]            # (1, H, D)
        k = attn.rope(attn.w_k(x_new).view(1, 1, 2, 8), 6)
        held = cache.append(k=k, v=attn.w_v(x_new).view(1, 1, 2, 8))       # (1, 7, G, D) each
        out = student_fn(q, held["k"], held["v"])                           # (1, H, D)
        step = attn.w_o(out.reshape(1, 1, 32))
    assert torch.allclose(step, full[:, 6:], atol=1e-5, rtol=1e-5), (
        "inside CausalSelfAttention your decode step does not reproduce the full forward's last token")


CHECKS = {"1.1": check_causal_mask, "1.2": check_gqa_cache_bytes, "1.3": check_gqa_decode_step}
