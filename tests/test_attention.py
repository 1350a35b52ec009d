"""Baseline attentions: MHA/GQA/MQA and linear attention, cached decoding == full forward, cache shapes, causality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.attention import CausalSelfAttention, LinearAttention, causal_mask
from components.kv_cache import LayerCache

TOL = dict(atol=1e-5, rtol=1e-5)
D_MODEL, N_HEADS = 32, 4       # head dim 8
KINDS = {"mha": 4, "gqa": 2, "mqa": 1, "linear": None}


def make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "linear":
        return LinearAttention(D_MODEL, N_HEADS, max_positions=256).eval()
    return CausalSelfAttention(D_MODEL, N_HEADS, KINDS[kind], max_positions=256).eval()


def decode(attn, x, chunks):
    cache, outs, start = LayerCache(), [], 0
    for size in chunks:
        outs.append(attn(x[:, start:start + size], cache=cache))
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), cache


def test_causal_mask_offsets_the_new_tokens():
    assert causal_mask(1, 5) is None
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)   # 2 new tokens after 2 cached
    assert torch.equal(causal_mask(2, 4), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunks", [[1] * 9, [5, 1, 1, 1, 1], [4, 3, 1, 1]], ids=["steps", "prefill5", "chunk3"])
def test_cached_decoding_equals_full_forward(kind, chunks):
    attn = make(kind)
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        full = attn(x)
        stepped, cache = decode(attn, x, chunks)
    assert full.shape == (2, 9, D_MODEL)
    torch.testing.assert_close(stepped, full, **TOL)
    assert cache.length == 9


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa"])
def test_cache_holds_k_and_v_per_kv_head(kind):
    _, cache = decode(make(kind), torch.randn(3, 7, D_MODEL), [4, 1, 2])
    held = cache.tensors()
    assert set(held) == {"k", "v"}
    assert held["k"].shape == held["v"].shape == (3, 7, KINDS[kind], D_MODEL // N_HEADS)
    assert cache.values_per_token() == 2 * KINDS[kind] * (D_MODEL // N_HEADS)


def test_absorb_flag_is_accepted_and_ignored():
    attn, x = make("gqa"), torch.randn(1, 5, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, absorb=True), attn(x), atol=0, rtol=0)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_repeated_kv_weights(n_kv_heads):
    """GQA/MQA == MHA whose kv heads repeat the shared ones (query head h reads kv head h // (H/G))."""
    grouped = make("gqa" if n_kv_heads == 2 else "mqa")
    full = make("mha", seed=1)
    head_dim = D_MODEL // N_HEADS
    with torch.no_grad():
        for name in ("w_q", "w_o"):
            getattr(full, name).weight.copy_(getattr(grouped, name).weight)
        for name in ("w_k", "w_v"):
            per_head = getattr(grouped, name).weight.view(n_kv_heads, head_dim, D_MODEL)
            getattr(full, name).weight.copy_(per_head.repeat_interleave(N_HEADS // n_kv_heads, 0).flatten(0, 1))
        x = torch.randn(2, 6, D_MODEL)
        torch.testing.assert_close(grouped(x), full(x), **TOL)


def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    mha = make("mha")
    torch.manual_seed(3)
    gqa = CausalSelfAttention(D_MODEL, N_HEADS, n_kv_heads=N_HEADS, max_positions=256).eval()
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 6, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), **TOL)


def test_mha_matches_a_hand_written_reference():
    attn, x = make("mha"), torch.randn(1, 6, D_MODEL)
    B, T, H, D = 1, 6, N_HEADS, D_MODEL // N_HEADS
    with torch.no_grad():
        q = attn.rope(attn.w_q(x).view(B, T, H, D), 0).transpose(1, 2)
        k = attn.rope(attn.w_k(x).view(B, T, H, D), 0).transpose(1, 2)
        v = attn.w_v(x).view(B, T, H, D).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~causal_mask(T, T), float("-inf"))
        expected = attn.w_o((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D))
        torch.testing.assert_close(attn(x), expected, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    attn = make(kind)
    x = torch.randn(1, 8, D_MODEL)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, D_MODEL)
    with torch.no_grad():
        out_x, out_y = attn(x), attn(y)
    torch.testing.assert_close(out_x[:, :5], out_y[:, :5], **TOL)
    assert not torch.allclose(out_x[:, 5:], out_y[:, 5:])


# --- linear attention ----------------------------------------------------------------------------

def linear_attention_recurrent(attn: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The recurrence of Katharopoulos et al., one token at a time, written out independently."""
    B, T, _ = x.shape
    H, D = attn.n_heads, attn.head_dim
    phi_q = F.elu(attn.w_q(x).view(B, T, H, D)) + 1
    phi_k = F.elu(attn.w_k(x).view(B, T, H, D)) + 1
    v = attn.w_v(x).view(B, T, H, D)
    state, z, outs = torch.zeros(B, H, D, D), torch.zeros(B, H, D), []
    for t in range(T):
        state = state + torch.einsum("bhd,bhe->bhde", phi_k[:, t], v[:, t])    # S_t = S_{t-1} + phi(k) v^T
        z = z + phi_k[:, t]                                                  # z_t = z_{t-1} + phi(k)
        numerator = torch.einsum("bhd,bhde->bhe", phi_q[:, t], state)
        outs.append(numerator / torch.einsum("bhd,bhd->bh", phi_q[:, t], z).unsqueeze(-1))
    return attn.w_o(torch.stack(outs, dim=1).reshape(B, T, H * D))


def test_linear_parallel_form_equals_recurrence_across_chunks():
    attn = make("linear")
    attn.chunk_size = 4                                   # 11 tokens: chunks of 4, 4, 3
    x = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), linear_attention_recurrent(attn, x), **TOL)


def test_linear_cache_size_is_constant():
    attn = make("linear")
    x = torch.randn(2, 40, D_MODEL)
    cache, sizes = LayerCache(), []
    with torch.no_grad():
        attn(x[:, :3], cache=cache)
        sizes.append(cache.nbytes())
        for t in range(3, 40):
            attn(x[:, t:t + 1], cache=cache)
        sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1] == 2 * N_HEADS * (8 * 8 + 8) * 4    # S (H, D, D) and z (H, D), fp32
    assert cache.length == 40 and cache.values_per_token() == 0


def test_positions_past_the_table_are_an_error():
    for kind in ("mha", "linear"):
        with pytest.raises(ValueError, match="exceeds"):
            make(kind)(torch.randn(1, 257, D_MODEL))
