"""Chapter 3 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes."""

from __future__ import annotations

import torch

from exercises import check_exercise
from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def absorb_query_right(q_nope, w_uk, n_heads):
    H, D = n_heads, q_nope.shape[-1]
    return torch.einsum("bthd,hdc->bthc", q_nope, w_uk.view(H, D, -1))


def fold_wuv_into_wo_right(w_uv, w_o, n_heads):
    d, H = w_o.shape[0], n_heads
    V, C = w_uv.shape[0] // H, w_uv.shape[1]
    return torch.einsum("dhv,hvc->dhc", w_o.view(d, H, V), w_uv.view(H, V, C)).reshape(d, H * C)


def fold_wuk_into_wuq_right(w_uq, w_uk, n_heads):
    H = n_heads
    D, Q, C = w_uq.shape[0] // H, w_uq.shape[1], w_uk.shape[1]
    return torch.einsum("hdc,hdq->hcq", w_uk.view(H, D, C), w_uq.view(H, D, Q)).reshape(H * C, Q)


# --- wrong answers -------------------------------------------------------------------------------
def absorb_query_heads_mixed(q_nope, w_uk, n_heads):
    """Splits w_uk's rows as (D, H) instead of (H, D): right shapes, wrong rows per head."""
    H, D = n_heads, q_nope.shape[-1]
    return torch.einsum("bthd,dhc->bthc", q_nope, w_uk.view(D, H, -1))


def fold_wuv_into_wo_one_head(w_uv, w_o, n_heads):
    """Uses head 0's W_UV for every head."""
    d, H = w_o.shape[0], n_heads
    V, C = w_uv.shape[0] // H, w_uv.shape[1]
    head0 = w_uv[:V]
    return torch.einsum("dhv,vc->dhc", w_o.view(d, H, V), head0).reshape(d, H * C)


def fold_wuk_into_wuq_untransposed(w_uq, w_uk, n_heads):
    """Forgets to transpose the per-head blocks: (Q, C) blocks reshaped into the right shape."""
    H = n_heads
    D, Q, C = w_uq.shape[0] // H, w_uq.shape[1], w_uk.shape[1]
    return torch.einsum("hdc,hdq->hqc", w_uk.view(H, D, C), w_uq.view(H, D, Q)).reshape(H * C, Q)


CORRECT = {"3.1": absorb_query_right, "3.2": fold_wuv_into_wo_right, "3.3": fold_wuk_into_wuq_right,
           "3.4": "Absorbing pays off when decoding: one query against many cached latents."}
WRONG = [
    ("3.1", absorb_query_heads_mixed, "view it as (H, D, C)"),
    ("3.2", fold_wuv_into_wo_one_head, "W_O[:, h*V:(h+1)*V] @ W_UV_h"),
    ("3.3", fold_wuk_into_wuq_untransposed, "W_UK_h^T W_UQ_h"),
]

(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_wrong_shape_is_a_fail_with_the_expected_shape(capsys):
    check_exercise("3.2", lambda w_uv, w_o, n_heads: w_o @ w_uv[: w_o.shape[1]])
    assert "expected shape (40, 60)" in capsys.readouterr().out
