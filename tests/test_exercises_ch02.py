"""Chapter 2 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes."""

from __future__ import annotations

import torch

from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def mla_vs_mha_cache_right(n_heads, head_dim, kv_latent_dim, rope_head_dim, n_layers, bytes_per_value=2):
    mla = (kv_latent_dim + rope_head_dim) * n_layers * bytes_per_value
    mha = 2 * n_heads * head_dim * n_layers * bytes_per_value
    return mla, mha


def latent_kv_right(x, w_dkv, kv_norm_weight, w_uk, w_uv, n_heads, eps=1e-6):
    B, T, _ = x.shape
    c = x @ w_dkv.T                                                     # (B, T, C)
    c_kv = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps) * kv_norm_weight
    k_nope = (c_kv @ w_uk.T).view(B, T, n_heads, -1)                    # (B, T, H, D)
    v = (c_kv @ w_uv.T).view(B, T, n_heads, -1)                         # (B, T, H, V)
    return c_kv, k_nope, v


def mla_scores_right(q_nope, q_rope, k_nope, k_rope):
    T, S = q_nope.shape[1], k_nope.shape[1]
    D, R = q_nope.shape[-1], q_rope.shape[-1]
    scores = (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
              + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)) / (D + R) ** 0.5
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return scores.masked_fill(~allowed, float("-inf"))


# --- wrong answers -------------------------------------------------------------------------------
def mla_vs_mha_cache_no_rope(n_heads, head_dim, kv_latent_dim, rope_head_dim, n_layers, bytes_per_value=2):
    return kv_latent_dim * n_layers * bytes_per_value, 2 * n_heads * head_dim * n_layers * bytes_per_value


def latent_kv_no_norm(x, w_dkv, kv_norm_weight, w_uk, w_uv, n_heads, eps=1e-6):
    B, T, _ = x.shape
    c_kv = x @ w_dkv.T
    return c_kv, (c_kv @ w_uk.T).view(B, T, n_heads, -1), (c_kv @ w_uv.T).view(B, T, n_heads, -1)


def mla_scores_nope_scale(q_nope, q_rope, k_nope, k_rope):
    D, R = q_nope.shape[-1], q_rope.shape[-1]
    return mla_scores_right(q_nope, q_rope, k_nope, k_rope) * ((D + R) / D) ** 0.5   # 1/sqrt(D)


def mla_scores_unmasked(q_nope, q_rope, k_nope, k_rope):
    D, R = q_nope.shape[-1], q_rope.shape[-1]
    return (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
            + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)) / (D + R) ** 0.5


CORRECT = {"2.1": mla_vs_mha_cache_right, "2.2": latent_kv_right, "2.3": mla_scores_right}
WRONG = [
    ("2.1", mla_vs_mha_cache_no_rope, "C + R"),
    ("2.2", latent_kv_no_norm, "RMS-normalised"),
    ("2.3", mla_scores_nope_scale, "1/sqrt(D + R)"),
    ("2.3", mla_scores_unmasked, "mask the future"),
]

test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
    exercise_checks(CORRECT, WRONG)
