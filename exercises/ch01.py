"""Hidden cases for chapter 1 (attention and the KV cache).

1.1 a causal mask for T new tokens after S - T cached ones
1.2 one decode step of causal linear attention: its "cache" is a running state, not a growing list
1.3 one decode step of GQA attention over a cache
1.4 written: what GQA and MQA give up for their smaller cache

Expected values come from the library itself (`causal_mask`, and `LinearAttention` /
`CausalSelfAttention` run on random weights), never from a copy of the answer; the hints come from
probes whose right output is known in closed form. The functions an exercise asks for are switched
off while the answer runs (exercises/guard.py).
"""

from __future__ import annotations

import math

import torch

from components.attention import CausalSelfAttention, LinearAttention, causal_mask
from components.kv_cache import LayerCache
from exercises import Exercise


def _shape(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


# --- 1.1 ------------------------------------------------------------------------------------
def _library_mask(T: int, S: int) -> torch.Tensor:
    mask = causal_mask(T, S)                    # None when nothing is hidden (one new token)
    return torch.ones(T, S, dtype=torch.bool) if mask is None else mask


def check_causal_mask(student_fn) -> None:
    for T, S in [(4, 4), (1, 1), (1, 6), (2, 5), (3, 7), (6, 6)]:
        expected = _library_mask(T, S)
        got = student_fn(T, S)
        assert torch.is_tensor(got), f"my_causal_mask({T}, {S}) should return a tensor, got {type(got).__name__}"
        assert got.shape == (T, S), f"my_causal_mask({T}, {S}) has shape {tuple(got.shape)}, expected ({T}, {S})"
        assert got.dtype == torch.bool, f"return a bool tensor (True = may look), got {got.dtype}"
        if not torch.equal(got, expected):
            if T < S and torch.equal(got, torch.ones(T, S, dtype=torch.bool).tril()):
                raise AssertionError(
                    f"my_causal_mask({T}, {S}): the {T} new tokens are the LAST {T} of {S}; query i sits at "
                    f"position {S - T} + i, so it sees keys j <= {S - T} + i (shift the diagonal)")
            if torch.equal(got, ~expected):
                raise AssertionError("True must mean 'may look' (the past and itself); your mask is inverted")
            raise AssertionError(f"my_causal_mask({T}, {S}) is wrong; expected\n{expected.int()}\ngot\n{got.int()}")


# --- 1.2 ------------------------------------------------------------------------------------
def _as_step(result, B: int, H: int, D: int):
    assert isinstance(result, (tuple, list)) and len(result) == 3, \
        f"linear_attention_step must return (out, state, z), got {type(result).__name__}"
    out, state, z = result
    for name, value, shape in [("out", out, (B, H, D)), ("state", state, (B, H, D, D)), ("z", z, (B, H, D))]:
        assert torch.is_tensor(value) and tuple(value.shape) == shape, \
            f"{name} should have shape {shape}, got {_shape(value)}"
    return out, state, z


def _probe_one_token(student_fn) -> None:
    """One token, q = k = 0: phi = elu + 1 is 1 everywhere, so the output is the only value, v."""
    v = torch.tensor([[[0.5, -1.0, 2.0, 0.25]]])                              # (B=1, H=1, D=4)
    zero = torch.zeros(1, 1, 4)
    out, _, _ = _as_step(student_fn(zero.clone(), zero.clone(), v.clone(), torch.zeros(1, 1, 4, 4), zero.clone()),
                         1, 1, 4)
    if torch.allclose(out, v, atol=1e-6):
        return
    if not torch.isfinite(out).all() or torch.allclose(out, torch.zeros_like(out)):
        raise AssertionError("one token with q = k = 0 should give out = v (the only value), got 0 or NaN: "
                             "phi(x) = elu(x) + 1 (1 at x = 0, never 0), and the new token's phi(k) v^T and phi(k) "
                             "enter S and z BEFORE its output is read (o_t sums over s <= t)")
    raise AssertionError(f"one token should give out = v, got {out.flatten().tolist()}: "
                         "o = phi(q) S / (phi(q) . z), with S = phi(k) v^T and z = phi(k) for the first token")


def check_linear_attention_step(student_fn) -> None:
    _probe_one_token(student_fn)
    for seed, (B, H, d, T) in enumerate([(1, 2, 16, 5), (2, 4, 32, 7)]):
        torch.manual_seed(120 + seed)
        attn = LinearAttention(d, H, max_positions=64).eval()
        D = d // H
        x = torch.randn(B, T, d)
        with torch.no_grad():
            full = attn(x)                                                    # (B, T, d)
            cache = LayerCache()
            attn(x, cache=cache)
            s_ref, z_ref = cache.get_state("s"), cache.get_state("z")          # after all T tokens
            q, k, v = (w(x).view(B, T, H, D) for w in (attn.w_q, attn.w_k, attn.w_v))
            state, z, outs = torch.zeros(B, H, D, D), torch.zeros(B, H, D), []
            for t in range(T):
                out, state, z = _as_step(student_fn(q[:, t].clone(), k[:, t].clone(), v[:, t].clone(), state, z),
                                         B, H, D)
                outs.append(out)
            got = attn.w_o(torch.stack(outs, dim=1).reshape(B, T, d))
        where = f"B={B}, H={H}, D={D}, {T} tokens"
        if not torch.allclose(z.float(), z_ref, atol=1e-4, rtol=1e-4):
            raise AssertionError(f"{where}: after the last token z should be sum_s phi(k_s) (phi = elu + 1), "
                                 f"(B, H, D); max abs error {(z.float() - z_ref).abs().max().item():.3g}")
        if not torch.allclose(state.float(), s_ref, atol=1e-4, rtol=1e-4):
            if torch.allclose(state.float().transpose(-1, -2), s_ref, atol=1e-4, rtol=1e-4):
                raise AssertionError(f"{where}: your state is transposed: S[i, j] = sum_s phi(k_s)[i] v_s[j] "
                                     "(key dim first, as LinearAttention keeps it), read with phi(q) @ S")
            raise AssertionError(f"{where}: after the last token the state should be S = sum_s phi(k_s) v_s^T, "
                                 f"(B, H, D, D); max abs error {(state.float() - s_ref).abs().max().item():.3g}")
        assert torch.allclose(got, full, atol=1e-4, rtol=1e-4), (
            f"{where}: the state is right but the outputs, fed through W_O, do not reproduce LinearAttention's "
            "forward: o_t = phi(q_t) S_t / (phi(q_t) . z_t), with S_t and z_t already including token t")


# --- 1.3 ------------------------------------------------------------------------------------
def _decode_case(student_fn, B: int, H: int, G: int, S: int, D: int, seed: int) -> None:
    """Prefill S - 1 tokens into a real CausalSelfAttention's cache, decode token S through the answer."""
    torch.manual_seed(seed)
    d = H * D
    attn = CausalSelfAttention(d, H, G, max_positions=32).eval()
    x = torch.randn(B, S, d)
    with torch.no_grad():
        full = attn(x)                                                       # (B, S, d)
        cache = LayerCache()
        if S > 1:
            attn(x[:, :-1], cache=cache)
        x_new = x[:, -1:]
        q = attn.rope(attn.w_q(x_new).view(B, 1, H, D), S - 1)[:, 0]          # (B, H, D), rotated
        k = attn.rope(attn.w_k(x_new).view(B, 1, G, D), S - 1)
        held = cache.append(k=k, v=attn.w_v(x_new).view(B, 1, G, D))          # (B, S, G, D) each
        out = student_fn(q, held["k"].clone(), held["v"].clone())
        assert torch.is_tensor(out) and out.shape == (B, H, D), (
            f"expected shape {(B, H, D)} for q {(B, H, D)} and a cache {(B, S, G, D)}, got {_shape(out)}")
        step = attn.w_o(out.reshape(B, 1, d))
    assert torch.allclose(step, full[:, -1:], atol=1e-5, rtol=1e-5), (
        f"B={B}, H={H}, G={G}, S={S}, D={D}: inside CausalSelfAttention your decode step does not reproduce "
        "the full forward's last token (scores q . k / sqrt(D) over all S cached keys, softmax, weighted values)")


def _probe_grouping(student_fn) -> None:
    """All keys 0 (uniform attention) and kv head g's values all equal g + 1: head h must return the
    number of the kv head it reads, plus one."""
    H, G, S, D = 6, 3, 4, 2
    v_cache = (torch.arange(G, dtype=torch.float32) + 1).view(1, 1, G, 1).expand(1, S, G, D).clone()
    out = student_fn(torch.randn(1, H, D), torch.zeros(1, S, G, D), v_cache)
    assert torch.is_tensor(out) and out.shape == (1, H, D), f"expected shape {(1, H, D)}, got {_shape(out)}"
    read = out[0, :, 0]                                                       # (H,) kv head + 1 per query head
    wanted = torch.tensor([h // (H // G) + 1 for h in range(H)], dtype=torch.float32)
    if torch.allclose(read, wanted, atol=1e-5):
        return
    if torch.allclose(read, torch.tensor([h % G + 1 for h in range(H)], dtype=torch.float32), atol=1e-5):
        raise AssertionError("wrong head grouping: query head h reads kv head h // (H/G) "
                             "(repeat_interleave), not h % G (repeat)")
    raise AssertionError(f"with H={H} query heads and G={G} kv heads, query head h must read kv head h // (H/G); "
                         f"a probe whose kv head g holds the value g + 1 read {read.tolist()}")


def _probe_scale(student_fn) -> None:
    """Two keys, 0 and a*e0, values 0 and 1: the output is softmax weight of key 1 = sigmoid(q . k1 / sqrt(D))."""
    D, a = 4, 3.0
    q = torch.zeros(1, 1, D)
    q[..., 0] = 1.0
    k_cache, v_cache = torch.zeros(1, 2, 1, D), torch.zeros(1, 2, 1, D)
    k_cache[0, 1, 0, 0] = a
    v_cache[0, 1] = 1.0
    got = student_fn(q, k_cache, v_cache)[0, 0, 0].item()
    if math.isclose(got, 1 / (1 + math.exp(-a / math.sqrt(D))), abs_tol=1e-5):
        return
    if math.isclose(got, 1 / (1 + math.exp(-a)), abs_tol=1e-5):
        raise AssertionError("scale the scores by 1/sqrt(D) before the softmax")
    raise AssertionError(f"one head, two keys (0 and 3 e_0) with values 0 and 1, q = e_0, D = 4: the output should "
                         f"be softmax weight of the second key, sigmoid(3 / sqrt(4)) = {1 / (1 + math.exp(-1.5)):.4f}, "
                         f"got {got:.4f}")


def check_gqa_decode_step(student_fn) -> None:
    _probe_grouping(student_fn)
    _probe_scale(student_fn)
    for seed, (B, H, G, S, D) in enumerate([(1, 4, 4, 5, 8), (2, 4, 2, 7, 8), (2, 6, 3, 1, 4), (3, 8, 1, 9, 16)]):
        _decode_case(student_fn, B, H, G, S, D, seed=130 + seed)


EXERCISES = {
    "1.1": Exercise("1.1", "my_causal_mask", 2, check_causal_mask,
                    forbidden=(causal_mask, LayerCache.attention_mask),
                    why="build the (T, S) mask from torch.ones(...).tril(...) yourself"),
    "1.2": Exercise("1.2", "linear_attention_step", 4, check_linear_attention_step,
                    forbidden=(LinearAttention.forward,),
                    why="write the state update and the read-out of section 4 yourself"),
    "1.3": Exercise("1.3", "gqa_decode_step", 4, check_gqa_decode_step,
                    forbidden=(CausalSelfAttention.forward,),
                    why="write the scores, softmax and weighted values yourself"),
    "1.4": Exercise("1.4", "answer_1_4", 2),
}
