"""Chapter 5 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes, and an
answer that hands the work to the library FAILs saying so."""

import torch

from components.router import Router, balance_f_times_p
from exercises import FAIL, check_exercise
from exercises.ch05 import _reference_simulation
from tests.exercise_checks import exercise_checks
from trainer import load_stats


# --- correct answers (the same as the solutions notebook) ------------------------------------
def expert_balance_loss(tokens_per_expert, probs, top_k):
    n_tokens, n_experts = probs.shape
    f = tokens_per_expert.float() * n_experts / (top_k * n_tokens)   # (E,) constant: counts carry no gradient
    P = probs.mean(0)                                                # (E,) mean normalised score, differentiable
    return (f * P).sum()


def lfb_simulation(logits, top_k, gamma, n_steps, sign=1.0, proportional=False, feed_back=True):
    scores = logits.sigmoid()                                        # (N, E), fixed: the router does not learn
    bias = torch.zeros(logits.shape[1])
    history = []
    for _ in range(n_steps):
        ids = (scores + (bias if feed_back else 0)).topk(top_k, dim=-1).indices   # the bias only selects
        counts = torch.bincount(ids.flatten(), minlength=logits.shape[1])           # (E,)
        history.append(counts)
        load = counts.float()
        step = (load.mean() - load) if proportional else torch.sign(load.mean() - load)
        bias = bias + sign * gamma * step                            # underloaded up, overloaded down
    return bias, torch.stack(history)


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


def lfb_wrong_sign(logits, top_k, gamma, n_steps):
    return lfb_simulation(logits, top_k, gamma, n_steps, sign=-1.0)


def lfb_proportional(logits, top_k, gamma, n_steps):
    return lfb_simulation(logits, top_k, gamma, n_steps, proportional=True)


def lfb_bias_never_selects(logits, top_k, gamma, n_steps):
    return lfb_simulation(logits, top_k, gamma, n_steps, feed_back=False)


def max_ratio_instead(tokens_per_expert):
    load = tokens_per_expert.float()
    return load.amax(-1) / load.mean(-1)


def max_violation_flattened(tokens_per_expert):
    load = tokens_per_expert.float()
    return (load.max() - load.mean()) / load.mean()


# --- answers that hand the work to the library -----------------------------------------------------
def balance_loss_from_the_library(tokens_per_expert, probs, top_k):
    return balance_f_times_p(tokens_per_expert, probs, top_k)


def lfb_through_the_router(logits, top_k, gamma, n_steps):
    n_experts = logits.shape[1]
    router = Router(n_experts, n_experts, top_k, use_bias=True, bias_update_rate=gamma)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n_experts))
    history = []
    for _ in range(n_steps):
        history.append(router(logits).tokens_per_expert)
        router.update_bias(history[-1])
    return router.bias.clone(), torch.stack(history)


def max_violation_from_load_stats(tokens_per_expert):
    return torch.tensor(load_stats(tokens_per_expert)["max_ratio"] - 1.0)


CORRECT = {"5.1": expert_balance_loss, "5.2": lfb_simulation, "5.3": max_violation,
           "5.4": "The auxiliary loss adds a gradient that competes with the language-model loss; the bias does not."}
WRONG = [
    ("5.1", balance_loss_mixtral_scale, "1/K"),
    ("5.1", balance_loss_raw_counts, "raw counts"),
    ("5.1", balance_loss_detached, "no gradient"),
    ("5.1", balance_loss_soft_f, "wrong gradient"),
    ("5.1", balance_loss_from_the_library, "components.router.balance_f_times_p"),
    ("5.2", lfb_wrong_sign, "wrong sign"),
    ("5.2", lfb_proportional, "SIGN"),
    ("5.2", lfb_bias_never_selects, "feed back"),
    ("5.2", lfb_through_the_router, "components.router.Router.forward"),
    ("5.3", max_violation_from_load_stats, "trainer.load_stats"),
    ("5.3", max_ratio_instead, "max/mean"),
    ("5.3", max_violation_flattened, "LAST dim"),
]


(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_the_hidden_simulation_balances_the_router():
    """5.2's cases are meaningful: over the steps the sign rule brings the busiest expert down."""
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    logits[:, :2] += 1.5
    _, counts = _reference_simulation(logits, 2, 0.02, 40)
    assert counts[0].max() >= 16 and counts[-10:].max() < counts[0].max()


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("5.3", lambda counts: counts.mean(), verbose=False) == FAIL   # mean() of a long tensor
