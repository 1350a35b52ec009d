"""Chapter 4 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes, and an
answer that hands the work to the library FAILs saying so."""

import torch

import utils
from components.deepseek_model import DeepSeekModel
from components.router import Router
from exercises import FAIL, check_exercise
from tests.exercise_checks import exercise_checks


# --- correct answers (the same as the solutions notebook) ------------------------------------
def sigmoid_topk_weights(logits, bias, top_k):
    scores = logits.sigmoid()                                        # (N, E) V3 eq 15
    expert_ids = (scores + bias).topk(top_k, dim=-1).indices         # (N, K) selected by s + b, eq 16
    weights = scores.gather(1, expert_ids)                           # (N, K) unbiased scores
    return weights / weights.sum(-1, keepdim=True), expert_ids       # eq 13


def dense_moe_combine(weights, expert_ids, expert_outputs, capacity=None):
    n_tokens, n_experts, _ = expert_outputs.shape
    gates = torch.zeros(n_tokens, n_experts, dtype=expert_outputs.dtype)
    gates.scatter_(1, expert_ids, weights.to(expert_outputs.dtype))          # (N, E)
    if capacity is not None:
        chosen = torch.zeros(n_tokens, n_experts, dtype=torch.long).scatter_(1, expert_ids, 1)
        earlier = chosen.cumsum(0) - chosen                                   # earlier tokens that chose e
        gates = gates * (earlier < capacity)
    return torch.einsum("ne,ned->nd", gates, expert_outputs)


def ffn_parameter_counts(cfg):
    per_expert = 3 * cfg.d_model * cfg.expert_hidden_dim
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    dense = (cfg.n_layers - n_moe) * 3 * cfg.d_model * cfg.resolved().dense_hidden_dim
    router = cfg.d_model * cfg.n_routed_experts
    total = dense + n_moe * (router + (cfg.n_routed_experts + cfg.n_shared_experts) * per_expert)
    active = dense + n_moe * (router + (cfg.top_k + cfg.n_shared_experts) * per_expert)
    return total, active


# --- deliberately wrong answers ----------------------------------------------------------------
def sigmoid_unnormalised(logits, bias, top_k):
    scores = logits.sigmoid()
    expert_ids = (scores + bias).topk(top_k, dim=-1).indices
    return scores.gather(1, expert_ids), expert_ids


def sigmoid_weighted_by_biased_scores(logits, bias, top_k):
    key = logits.sigmoid() + bias
    expert_ids = key.topk(top_k, dim=-1).indices
    weights = key.gather(1, expert_ids)
    return weights / weights.sum(-1, keepdim=True), expert_ids


def combine_ignoring_capacity(weights, expert_ids, expert_outputs, capacity=None):
    return dense_moe_combine(weights, expert_ids, expert_outputs, None)


def ffn_counts_without_router(cfg):
    total, active = ffn_parameter_counts(cfg)
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    return total - n_moe * cfg.d_model * cfg.n_routed_experts, active - n_moe * cfg.d_model * cfg.n_routed_experts


def ffn_counts_all_experts_active(cfg):
    total, _ = ffn_parameter_counts(cfg)
    return total, total


# --- answers that hand the work to the library -----------------------------------------------------
def sigmoid_topk_through_the_router(logits, bias, top_k):
    n_experts = logits.shape[1]
    router = Router(n_experts, n_experts, top_k, score="sigmoid", use_bias=True)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n_experts))                # identity gate: its logits are ours
        router.bias.copy_(bias)
    out = router(logits)
    return out.weights, out.expert_ids


def ffn_counts_by_building_the_model(cfg):
    with torch.device("meta"):
        model = DeepSeekModel(cfg)
    ffn = sum(p.numel() for name, p in model.named_parameters() if ".ffn." in name)
    return ffn, ffn - (utils.count_parameters(model) - utils.count_active_parameters(model))


CORRECT = {"4.1": sigmoid_topk_weights, "4.2": dense_moe_combine, "4.3": ffn_parameter_counts,
           "4.4": "If the bias weighted the experts it would change every token's output, not only the load."}
WRONG = [
    ("4.1", sigmoid_unnormalised, "renormalise"),
    ("4.1", sigmoid_weighted_by_biased_scores, "UNBIASED"),
    ("4.2", combine_ignoring_capacity, "capacity"),
    ("4.3", ffn_counts_without_router, "router"),
    ("4.3", ffn_counts_all_experts_active, "K of the E"),
    ("4.1", sigmoid_topk_through_the_router, "components.router.Router.forward"),
    ("4.3", ffn_counts_by_building_the_model, "components.deepseek_model.DeepSeekModel.__init__"),
]


(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("4.2", lambda *args: torch.zeros(2, 2) @ torch.zeros(3, 3), verbose=False) == FAIL
