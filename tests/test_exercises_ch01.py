"""Chapter 1 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def causal_mask_right(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)


def gqa_cache_bytes_right(n_layers, n_kv_heads, head_dim, n_tokens, batch=1, bytes_per_value=2):
    return 2 * n_kv_heads * head_dim * n_layers * n_tokens * batch * bytes_per_value


def gqa_decode_step_right(q, k_cache, v_cache):
    H, G, D = q.shape[1], k_cache.shape[2], q.shape[2]
    k = k_cache.repeat_interleave(H // G, dim=2)                       # (B, S, H, D)
    v = v_cache.repeat_interleave(H // G, dim=2)
    weights = (torch.einsum("bhd,bshd->bhs", q, k) / D ** 0.5).softmax(-1)
    return torch.einsum("bhs,bshd->bhd", weights, v)


# --- wrong answers (each a classic mistake) ------------------------------------------------------
def causal_mask_no_offset(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril()


def gqa_cache_bytes_keys_only(n_layers, n_kv_heads, head_dim, n_tokens, batch=1, bytes_per_value=2):
    return n_kv_heads * head_dim * n_layers * n_tokens * batch * bytes_per_value


def gqa_decode_step_tiled(q, k_cache, v_cache):
    H, G = q.shape[1], k_cache.shape[2]
    k = k_cache.transpose(1, 2).repeat(1, H // G, 1, 1)                # h % G: the wrong grouping
    v = v_cache.transpose(1, 2).repeat(1, H // G, 1, 1)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v).squeeze(2)


CORRECT = {"1.1": causal_mask_right, "1.2": gqa_cache_bytes_right, "1.3": gqa_decode_step_right}
WRONG = [
    ("1.1", causal_mask_no_offset, "shift the diagonal"),
    ("1.2", gqa_cache_bytes_keys_only, "K AND V"),
    ("1.3", gqa_decode_step_tiled, "repeat_interleave"),
]

test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
    exercise_checks(CORRECT, WRONG)
