"""Chapter 2 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes,
and an answer that hands the work to the library FAILs saying so."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.kv_cache import LayerCache
from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def mla_cache_entries_right(mla, x, start):
    return mla.kv_norm(mla.w_dkv(x)), mla.rope(mla.w_kr(x), start)        # (B, T, C), (B, T, R)


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
def cache_entries_raw_latent(mla, x, start):
    return mla.w_dkv(x), mla.rope(mla.w_kr(x), start)


def cache_entries_unrotated(mla, x, start):
    return mla.kv_norm(mla.w_dkv(x)), mla.w_kr(x)


def cache_entries_from_position_0(mla, x, start):
    return mla.kv_norm(mla.w_dkv(x)), mla.rope(mla.w_kr(x), 0)


def cache_entries_per_head(mla, x, start):
    k_rope = mla.rope(mla.w_kr(x), start)
    return mla.kv_norm(mla.w_dkv(x)), k_rope.unsqueeze(2).expand(-1, -1, mla.n_heads, -1)


def latent_kv_no_norm(x, w_dkv, kv_norm_weight, w_uk, w_uv, n_heads, eps=1e-6):
    B, T, _ = x.shape
    c_kv = x @ w_dkv.T
    return c_kv, (c_kv @ w_uk.T).view(B, T, n_heads, -1), (c_kv @ w_uv.T).view(B, T, n_heads, -1)


def mla_scores_nope_scale(q_nope, q_rope, k_nope, k_rope):
    D, R = q_nope.shape[-1], q_rope.shape[-1]
    return mla_scores_right(q_nope, q_rope, k_nope, k_rope) * ((D + R) / D) ** 0.5   # 1/sqrt(D)


def mla_scores_without_rope(q_nope, q_rope, k_nope, k_rope):
    return mla_scores_right(q_nope, q_rope * 0, k_nope, k_rope)


def mla_scores_unmasked(q_nope, q_rope, k_nope, k_rope):
    D, R = q_nope.shape[-1], q_rope.shape[-1]
    return (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
            + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)) / (D + R) ** 0.5


# --- answers that hand the work to the library -----------------------------------------------------
def cache_entries_from_the_module(mla, x, start):
    cache = LayerCache()
    if start:                                                           # any tokens, to move to position start
        mla(torch.zeros(x.shape[0], start, x.shape[2]), cache=cache)
    mla(x, cache=cache)
    held = cache.tensors()
    return held["c_kv"][:, start:], held["k_rope"][:, start:]


def latent_kv_with_torch_rms_norm(x, w_dkv, kv_norm_weight, w_uk, w_uv, n_heads, eps=1e-6):
    B, T, _ = x.shape
    c_kv = F.rms_norm(x @ w_dkv.T, (w_dkv.shape[0],), kv_norm_weight, eps)
    return c_kv, (c_kv @ w_uk.T).view(B, T, n_heads, -1), (c_kv @ w_uv.T).view(B, T, n_heads, -1)


CORRECT = {"2.1": mla_cache_entries_right, "2.2": latent_kv_right, "2.3": mla_scores_right,
           "2.4": "RoPE would put a position-dependent rotation between the query and W_UK c, so W_UK could "
                  "not be absorbed and every cached latent would need decompressing."}
WRONG = [
    ("2.1", cache_entries_raw_latent, "NORMALISED latent"),
    ("2.1", cache_entries_unrotated, "ROTATED at its position"),
    ("2.1", cache_entries_from_position_0, "mla.rope(..., start)"),
    ("2.1", cache_entries_per_head, "shared by all heads"),
    ("2.1", cache_entries_from_the_module, "MultiHeadLatentAttention.forward"),
    ("2.2", latent_kv_no_norm, "RMS-normalised"),
    ("2.2", latent_kv_with_torch_rms_norm, "torch.nn.functional.rms_norm"),
    ("2.3", mla_scores_nope_scale, "1/sqrt(D + R)"),
    ("2.3", mla_scores_without_rope, "broadcast over the heads"),
    ("2.3", mla_scores_unmasked, "mask the future"),
]

(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)
