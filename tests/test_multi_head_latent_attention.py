"""MLA: absorbed == naive, cached decoding == full forward, cache width, causality, and == HF DeepseekV3Attention."""

from __future__ import annotations

import pytest
import torch

from components.kv_cache import LayerCache
from components.multi_head_latent_attention import MultiHeadLatentAttention
from hugging_face.convert import attention_to_hf

TOL = dict(atol=1e-5, rtol=1e-5)
# d, H, C, R, D, V: small, and V != D on purpose, so a key/value head-size mix-up cannot pass
SIZES = dict(d_model=64, n_heads=4, kv_latent_dim=32, rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)


def make_mla(q_latent_dim=48, seed=0, **overrides) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    mla = MultiHeadLatentAttention(**{**SIZES, **overrides}, q_latent_dim=q_latent_dim, max_positions=64)
    with torch.no_grad():  # non-unit norm weights, so a misplaced or missing norm shows up
        for norm in (mla.kv_norm, getattr(mla, "q_norm", None)):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return mla.eval()


def decode(mla, x, chunks, absorb):
    """Run x through a fresh cache in chunks of the given sizes; return the outputs and the cache."""
    cache, outs, start = LayerCache(), [], 0
    for size in chunks:
        outs.append(mla(x[:, start:start + size], cache=cache, absorb=absorb))
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("q_latent_dim", [48, None])
@pytest.mark.parametrize("v_head_dim", [12, 16])
def test_absorbed_equals_naive(q_latent_dim, v_head_dim):
    mla = make_mla(q_latent_dim, v_head_dim=v_head_dim)
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        naive, absorbed = mla(x, absorb=False), mla(x, absorb=True)
    assert naive.shape == (2, 11, 64)
    torch.testing.assert_close(absorbed, naive, **TOL)


@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 9, [5, 1, 1, 1, 1], [4, 3, 1, 1], [9]],
                         ids=["steps", "prefill5", "chunk3", "all"])
def test_cached_decoding_equals_full_forward(absorb, chunks):
    mla = make_mla()
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        full = mla(x)
        stepped, cache = decode(mla, x, chunks, absorb)
    torch.testing.assert_close(stepped, full, **TOL)
    assert cache.length == 9


def test_cache_holds_only_latent_and_rope_key():
    mla = make_mla()
    _, cache = decode(mla, torch.randn(3, 7, 64), [4, 1, 2], absorb=True)
    held = cache.tensors()
    assert set(held) == {"c_kv", "k_rope"}
    assert held["c_kv"].shape == (3, 7, 32) and held["k_rope"].shape == (3, 7, 8)
    assert cache.values_per_token() == 32 + 8
    assert cache.nbytes() == 3 * 7 * (32 + 8) * 4


def test_cached_latent_is_normalised_and_rope_key_rotated():
    mla = make_mla()
    x = torch.randn(1, 5, 64)
    _, cache = decode(mla, x, [5], absorb=False)
    with torch.no_grad():
        torch.testing.assert_close(cache.tensors()["c_kv"], mla.kv_norm(mla.w_dkv(x)), **TOL)
        torch.testing.assert_close(cache.tensors()["k_rope"], mla.rope(mla.w_kr(x), 0), **TOL)


@pytest.mark.parametrize("absorb", [False, True])
def test_causal(absorb):
    mla = make_mla()
    x = torch.randn(1, 8, 64)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 64)
    with torch.no_grad():
        out_x, out_y = mla(x, absorb=absorb), mla(y, absorb=absorb)
    torch.testing.assert_close(out_x[:, :5], out_y[:, :5], **TOL)
    assert not torch.allclose(out_x[:, 5:], out_y[:, 5:])


def test_gradients_reach_every_weight():
    mla = make_mla()
    mla(torch.randn(2, 6, 64)).sum().backward()
    missing = [name for name, p in mla.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --- against Hugging Face transformers (docs/maths.md §4) ---------------------------------------

def hf_attention(q_latent_dim):
    """HF's DeepseekV3Attention and rotary embedding for the sizes of SIZES; fails if transformers is missing."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    cfg = DeepseekV3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_latent_dim, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, rope_interleave=True, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attn_implementation="eager")
    return cfg, DeepseekV3Attention(cfg, layer_idx=0).eval(), DeepseekV3RotaryEmbedding(cfg)


def copy_into_hf(mla: MultiHeadLatentAttention, hf) -> None:
    """Our unfused weights -> HF's fused ones, through the project's one mapping (hugging_face/convert.py)."""
    hf.load_state_dict(attention_to_hf(mla.state_dict(), mla.n_heads), strict=True)


def additive_causal_mask(B, T, S):
    """HF eager attention wants a float mask [B, 1, T, S] with -inf where a query may not look."""
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return torch.zeros(B, 1, T, S).masked_fill(~allowed, float("-inf"))


@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("q_latent_dim", [48, None])
def test_matches_hugging_face(q_latent_dim, absorb):
    cfg, hf, rotary = hf_attention(q_latent_dim)
    # HF's q/kv norms are built with DeepseekV3RMSNorm's default eps, not rms_norm_eps: use theirs
    eps = hf.kv_a_layernorm.variance_epsilon
    mla = make_mla(q_latent_dim, norm_eps=eps)
    copy_into_hf(mla, hf)
    B, T = 2, 10
    x = torch.randn(B, T, 64)
    positions = torch.arange(T).expand(B, T)
    with torch.no_grad():
        expected, _ = hf(hidden_states=x, position_embeddings=rotary(x, positions),
                         attention_mask=additive_causal_mask(B, T, T))
        ours = mla(x, absorb=absorb)
    torch.testing.assert_close(ours, expected, **TOL)


@pytest.mark.parametrize("absorb", [False, True])
def test_incremental_decoding_matches_hugging_face(absorb):
    from transformers import DynamicCache

    cfg, hf, rotary = hf_attention(48)
    mla = make_mla(48, norm_eps=hf.kv_a_layernorm.variance_epsilon)
    copy_into_hf(mla, hf)
    B, T = 2, 8
    x = torch.randn(B, T, 64)
    hf_cache, cache, start = DynamicCache(config=cfg), LayerCache(), 0
    with torch.no_grad():
        for size in (5, 1, 2):                  # prefill 5, one step, then a 2-token chunk
            chunk = x[:, start:start + size]
            positions = torch.arange(start, start + size).expand(B, size)
            expected, _ = hf(hidden_states=chunk, position_embeddings=rotary(chunk, positions),
                             attention_mask=additive_causal_mask(B, size, start + size), cache=hf_cache)
            torch.testing.assert_close(mla(chunk, cache=cache, absorb=absorb), expected, **TOL)
            start += size
    # HF caches the same two tensors: c_KV as "keys" [B, 1, S, C] and k_rot as "values" [B, 1, S, R],
    # the latter with the rotated pairs de-interleaved ([evens | odds], docs/maths.md §1.3)
    k_rope = cache.tensors()["k_rope"]
    torch.testing.assert_close(cache.tensors()["c_kv"], hf_cache.layers[0].keys[:, 0], **TOL)
    torch.testing.assert_close(torch.cat([k_rope[..., 0::2], k_rope[..., 1::2]], -1), hf_cache.layers[0].values[:, 0],
                               **TOL)
