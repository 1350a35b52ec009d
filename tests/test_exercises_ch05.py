"""Chapter 5 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes."""

import torch

from exercises import FAIL, check_exercise
from tests.exercise_checks import exercise_checks


# --- correct answers (the same as the solutions notebook) ------------------------------------
def expert_balance_loss(tokens_per_expert, probs, top_k):
    n_tokens, n_experts = probs.shape
    f = tokens_per_expert.float() * n_experts / (top_k * n_tokens)   # (E,) constant: counts carry no gradient
    P = probs.mean(0)                                                # (E,) mean normalised score, differentiable
    return (f * P).sum()


def lfb_bias_update(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + gamma * torch.sign(load.mean() - load)


def max_violation(tokens_per_expert):
    load = tokens_per_expert.float()
    mean = load.mean(-1)
    return (load.amax(-1) - mean) / mean


# --- deliberately wrong answers ----------------------------------------------------------------
def balance_loss_mixtral_scale(tokens_per_expert, probs, top_k):
    return expert_balance_loss(tokens_per_expert, probs, top_k) * top_k          # HF: N * sum (c_i/T) P_i


def balance_loss_raw_counts(tokens_per_expert, probs, top_k):
    return (tokens_per_expert.float() * probs.mean(0)).sum()


def balance_loss_detached(tokens_per_expert, probs, top_k):
    return expert_balance_loss(tokens_per_expert, probs.detach(), top_k)


def balance_loss_soft_f(tokens_per_expert, probs, top_k):
    # f from a differentiable soft count: right value only by accident, and a gradient through f
    n_tokens, n_experts = probs.shape
    soft = probs * (tokens_per_expert.float() / probs.sum(0).detach())           # same column sums as the counts
    f = soft.sum(0) * n_experts / (top_k * n_tokens)
    return (f * probs.mean(0)).sum()


def bias_update_wrong_sign(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + gamma * torch.sign(load - load.mean())


def bias_update_proportional(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + gamma * (load.mean() - load)


def bias_update_ties_move(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + gamma * torch.where(load > load.mean(), -1.0, 1.0)


def max_ratio_instead(tokens_per_expert):
    load = tokens_per_expert.float()
    return load.amax(-1) / load.mean(-1)


def max_violation_flattened(tokens_per_expert):
    load = tokens_per_expert.float()
    return (load.max() - load.mean()) / load.mean()



CORRECT = {"5.1": expert_balance_loss, "5.2": lfb_bias_update, "5.3": max_violation}
WRONG = [
    ("5.1", balance_loss_mixtral_scale, "1/K"),
    ("5.1", balance_loss_raw_counts, "raw counts"),
    ("5.1", balance_loss_detached, "no gradient"),
    ("5.1", balance_loss_soft_f, "wrong gradient"),
    ("5.2", bias_update_wrong_sign, "wrong sign"),
    ("5.2", bias_update_proportional, "SIGN"),
    ("5.2", bias_update_ties_move, "sign(0) = 0"),
    ("5.3", max_ratio_instead, "max/mean"),
    ("5.3", max_violation_flattened, "LAST dim"),
]


test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
    exercise_checks(CORRECT, WRONG)


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("5.3", lambda counts: counts.mean(), verbose=False) == FAIL   # mean() of a long tensor
