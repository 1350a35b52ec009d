"""Chapter 6 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes, and an
answer that hands the work to the library (or to torch's optimizer) FAILs saying so."""

import math

import torch

import utils
from components.transformer_block import TransformerBlock
from exercises import FAIL, check_exercise
from tests.exercise_checks import exercise_checks
from training.schedule import lr_at


# --- correct answers (the same as the solutions notebook) ------------------------------------
def block_parameter_count(cfg, layer):
    cfg = cfg.resolved()                                         # the head sizes left None, filled in
    d, H, C = cfg.d_model, cfg.n_heads, cfg.kv_latent_dim
    D, R, V, Q = cfg.qk_nope_head_dim, cfg.rope_head_dim, cfg.v_head_dim, cfg.q_latent_dim
    if Q is None:
        query = d * H * D + d * H * R                            # W_Q and W_QR read h
    else:
        query = d * Q + Q + Q * H * D + Q * H * R                # W_DQ, q_norm, W_UQ, W_QR read c_Q
    attention = query + d * C + C + d * R + C * H * D + C * H * V + H * V * d
    norms = 2 * d                                                # attn_norm and ffn_norm
    if cfg.is_moe_layer(layer):
        ffn = d * cfg.n_routed_experts + (cfg.n_routed_experts + cfg.n_shared_experts) * 3 * d * cfg.expert_hidden_dim
    else:
        ffn = 3 * d * cfg.dense_hidden_dim
    return attention + norms + ffn


def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)                      # decoupled decay, on the weights
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad               # first moment
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad  # second moment
    m_hat = exp_avg / (1 - beta1 ** step)                        # bias correction, step = 1, 2, ...
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq


def lr_multiplier(step, warmup_steps, horizon, min_lr_ratio):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if horizon is None:
        return 1.0
    if step >= horizon:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, horizon - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- deliberately wrong answers ----------------------------------------------------------------
def block_without_norms(cfg, layer):
    return block_parameter_count(cfg, layer) - 2 * cfg.d_model


def block_counting_router_bias(cfg, layer):
    return block_parameter_count(cfg, layer) + (cfg.n_routed_experts if cfg.is_moe_layer(layer) else 0)


def adamw_l2_decay(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """Adam with an L2 term in the gradient: not AdamW's decoupled decay."""
    return adamw_step(param, grad + weight_decay * param, exp_avg, exp_avg_sq, step, lr, betas, eps, 0.0)


def adamw_no_bias_correction(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    return param - lr * exp_avg / (exp_avg_sq.sqrt() + eps), exp_avg, exp_avg_sq


def warmup_from_zero(step, warmup_steps, horizon, min_lr_ratio):
    if step < warmup_steps:
        return step / warmup_steps
    return lr_multiplier(step, warmup_steps, horizon, min_lr_ratio)


def cosine_to_zero(step, warmup_steps, horizon, min_lr_ratio):
    return lr_multiplier(step, warmup_steps, horizon, 0.0) if step < (horizon or math.inf) else min_lr_ratio


# --- answers that hand the work to the library -----------------------------------------------------
def block_count_by_building(cfg, layer):
    with torch.device("meta"):
        return utils.count_parameters(TransformerBlock(cfg, layer))


def adamw_with_torch(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    p = param.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                          "exp_avg_sq": exp_avg_sq.clone()}
    p.grad = grad.clone()
    optimizer.step()
    state = optimizer.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def lr_multiplier_from_the_schedule(step, warmup_steps, horizon, min_lr_ratio):
    return lr_at(step, peak_lr=1.0, warmup_steps=warmup_steps, horizon=horizon, min_lr_ratio=min_lr_ratio)


CORRECT = {"6.1": block_parameter_count, "6.2": adamw_step, "6.3": lr_multiplier,
           "6.4": "Below the unigram line the model uses its context; the first nats come from token frequencies."}
WRONG = [
    ("6.1", block_without_norms, "RMSNorms"),
    ("6.1", block_counting_router_bias, "buffer"),
    ("6.1", block_count_by_building, "TransformerBlock.__init__"),
    ("6.2", adamw_l2_decay, "DECOUPLED"),
    ("6.2", adamw_no_bias_correction, "correct the bias"),
    ("6.2", adamw_with_torch, "torch.optim.optimizer.Optimizer.__init__"),
    ("6.3", lr_multiplier_from_the_schedule, "schedule.lr_at"),
    ("6.3", warmup_from_zero, "(step + 1)"),
    ("6.3", cosine_to_zero, "not to 0"),
]


(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("6.3", lambda step, warmup, horizon, floor: 1 / 0, verbose=False) == FAIL
