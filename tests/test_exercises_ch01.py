"""Chapter 1 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exercises import FAIL, NOT_ATTEMPTED, PASS, check_exercise


def stub(*args, **kwargs):
    raise NotImplementedError


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


CASES = {
    "1.1": (causal_mask_right, causal_mask_no_offset),
    "1.2": (gqa_cache_bytes_right, gqa_cache_bytes_keys_only),
    "1.3": (gqa_decode_step_right, gqa_decode_step_tiled),
}


@pytest.mark.parametrize("exercise_id", CASES)
def test_stub_is_not_attempted(exercise_id):
    assert check_exercise(exercise_id, stub, verbose=False) == NOT_ATTEMPTED


@pytest.mark.parametrize("exercise_id", CASES)
def test_wrong_answer_fails(exercise_id):
    assert check_exercise(exercise_id, CASES[exercise_id][1], verbose=False) == FAIL


@pytest.mark.parametrize("exercise_id", CASES)
def test_right_answer_passes(exercise_id):
    assert check_exercise(exercise_id, CASES[exercise_id][0], verbose=False) == PASS


def test_hints_name_the_mistake(capsys):
    check_exercise("1.1", causal_mask_no_offset)
    check_exercise("1.2", gqa_cache_bytes_keys_only)
    check_exercise("1.3", gqa_decode_step_tiled)
    out = capsys.readouterr().out
    assert "shift the diagonal" in out and "K AND V" in out and "repeat_interleave" in out
