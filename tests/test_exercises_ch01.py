"""Chapter 1 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes,
and an answer that hands the work to the library function the exercise asks for FAILs saying so."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.attention import LinearAttention, causal_mask
from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def causal_mask_right(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)


def linear_attention_step_right(q, k, v, state, z):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1                          # (B, H, D), positive
    state = state + phi_k.unsqueeze(-1) * v.unsqueeze(-2)               # (B, H, D, D) += phi(k) v^T
    z = z + phi_k                                                       # (B, H, D)
    out = torch.einsum("bhi,bhij->bhj", phi_q, state) / (phi_q * z).sum(-1, keepdim=True)
    return out, state, z


def gqa_decode_step_right(q, k_cache, v_cache):
    H, G, D = q.shape[1], k_cache.shape[2], q.shape[2]
    k = k_cache.repeat_interleave(H // G, dim=2)                       # (B, S, H, D)
    v = v_cache.repeat_interleave(H // G, dim=2)
    weights = (torch.einsum("bhd,bshd->bhs", q, k) / D ** 0.5).softmax(-1)
    return torch.einsum("bhs,bshd->bhd", weights, v)


# --- wrong answers (each a classic mistake) ------------------------------------------------------
def causal_mask_no_offset(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril()


def linear_step_plain_elu(q, k, v, state, z):
    phi_q, phi_k = F.elu(q), F.elu(k)                                   # can be 0 or negative
    state, z = state + phi_k.unsqueeze(-1) * v.unsqueeze(-2), z + phi_k
    return torch.einsum("bhi,bhij->bhj", phi_q, state) / (phi_q * z).sum(-1, keepdim=True), state, z


def linear_step_transposed_state(q, k, v, state, z):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    state, z = state + v.unsqueeze(-1) * phi_k.unsqueeze(-2), z + phi_k  # v phi(k)^T
    return torch.einsum("bhj,bhij->bhi", phi_q, state) / (phi_q * z).sum(-1, keepdim=True), state, z


def gqa_decode_step_tiled(q, k_cache, v_cache):
    H, G = q.shape[1], k_cache.shape[2]
    k = k_cache.transpose(1, 2).repeat(1, H // G, 1, 1)                # h % G: the wrong grouping
    v = v_cache.transpose(1, 2).repeat(1, H // G, 1, 1)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v).squeeze(2)


def gqa_decode_step_unscaled(q, k_cache, v_cache):
    H, G = q.shape[1], k_cache.shape[2]
    k, v = k_cache.repeat_interleave(H // G, dim=2), v_cache.repeat_interleave(H // G, dim=2)
    return torch.einsum("bhs,bshd->bhd", torch.einsum("bhd,bshd->bhs", q, k).softmax(-1), v)


# --- answers that hand the work to the library -----------------------------------------------------
def causal_mask_wrapping_the_library(T, S):
    mask = causal_mask(T, S)                                            # None when T == 1
    return torch.ones(T, S, dtype=torch.bool) if mask is None else mask


def causal_mask_library_then_fallback(T, S):
    try:
        return causal_mask_wrapping_the_library(T, S)
    except AssertionError:                                              # hides the switched-off library ...
        return torch.ones(T, S, dtype=torch.bool).tril()                # ... and falls back to a wrong mask


def linear_step_through_the_module(q, k, v, state, z):
    B, H, D = q.shape
    attn = LinearAttention(H * D, H)
    return attn(q.reshape(B, 1, H * D)).view(B, H, D), state, z


CORRECT = {"1.1": causal_mask_right, "1.2": linear_attention_step_right, "1.3": gqa_decode_step_right,
           "1.4": "MQA keeps one key/value head for all queries, so every head attends with the same keys."}
WRONG = [
    ("1.1", causal_mask_no_offset, "shift the diagonal"),
    ("1.1", causal_mask_wrapping_the_library, "components.attention.causal_mask"),
    ("1.1", causal_mask_library_then_fallback, "components.attention.causal_mask"),
    ("1.1", causal_mask, "which is what this exercise asks you to write"),
    ("1.2", linear_step_plain_elu, "elu(x) + 1"),
    ("1.2", linear_step_transposed_state, "transposed"),
    ("1.2", linear_step_through_the_module, "LinearAttention.forward"),
    ("1.3", gqa_decode_step_tiled, "repeat_interleave"),
    ("1.3", gqa_decode_step_unscaled, "1/sqrt(D)"),
]

(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_the_library_is_back_after_a_delegating_answer():
    """Switching the library off is temporary: after the FAIL, causal_mask works again (same code)."""
    code = causal_mask.__code__
    from exercises import check_exercise

    check_exercise("1.1", causal_mask_wrapping_the_library, verbose=False)
    assert causal_mask.__code__ is code and torch.equal(causal_mask(2, 3), causal_mask_right(2, 3))
