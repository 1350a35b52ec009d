"""Chapter 6 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes."""

import math

from exercises import FAIL, check_exercise
from tests.exercise_checks import exercise_checks


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


def perplexity_and_bits(losses, n_tokens):
    mean = sum(loss * n for loss, n in zip(losses, n_tokens, strict=True)) / sum(n_tokens)
    return math.exp(mean), mean / math.log(2)


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


def unweighted_perplexity(losses, n_tokens):
    mean = sum(losses) / len(losses)
    return math.exp(mean), mean / math.log(2)


def mean_of_perplexities(losses, n_tokens):
    _, bits = perplexity_and_bits(losses, n_tokens)
    return sum(math.exp(loss) for loss in losses) / len(losses), bits


def warmup_from_zero(step, warmup_steps, horizon, min_lr_ratio):
    if step < warmup_steps:
        return step / warmup_steps
    return lr_multiplier(step, warmup_steps, horizon, min_lr_ratio)


def cosine_to_zero(step, warmup_steps, horizon, min_lr_ratio):
    return lr_multiplier(step, warmup_steps, horizon, 0.0) if step < (horizon or math.inf) else min_lr_ratio



CORRECT = {"6.1": block_parameter_count, "6.2": perplexity_and_bits, "6.3": lr_multiplier}
WRONG = [
    ("6.1", block_without_norms, "RMSNorms"),
    ("6.1", block_counting_router_bias, "buffer"),
    ("6.2", unweighted_perplexity, "n_tokens"),
    ("6.2", mean_of_perplexities, "mean of per-batch perplexities"),
    ("6.3", warmup_from_zero, "(step + 1)"),
    ("6.3", cosine_to_zero, "not to 0"),
]


test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
    exercise_checks(CORRECT, WRONG)


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("6.2", lambda losses, n_tokens: 1 / 0, verbose=False) == FAIL
