"""Chapter 8 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes,
and an answer that hands the work to the library FAILs saying so."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import utils
from ablation.report import compare, spread
from constants import TINY
from exercises.ch08 import WITHIN_CASES, _within
from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def equal_cache_twin_right(cfg):
    head_dim = cfg.d_model // cfg.n_heads
    kv_heads = {"mha": cfg.n_heads, "gqa": cfg.n_kv_heads, "mqa": 1}[cfg.attention]
    rope = cfg.resolved().rope_head_dim
    latent = 2 * kv_heads * head_dim - rope                  # MLA caches latent + RoPE key per token and layer
    if latent < 1:
        raise ValueError(f"the baseline caches {2 * kv_heads * head_dim} numbers, not more than the RoPE key ({rope})")
    return replace(cfg, attention="mla", kv_latent_dim=latent)


def within_noise_right(a, b):
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 seeds per run")
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return abs(statistics.fmean(a) - statistics.fmean(b)) <= 2 * se


def equal_active_variant_right(cfg, n_routed_experts):
    factor, rest = divmod(n_routed_experts, cfg.n_routed_experts)
    if rest or factor < 1 or cfg.expert_hidden_dim % factor:
        raise ValueError("need a whole split factor that divides the expert width")
    return replace(cfg, n_routed_experts=n_routed_experts, expert_hidden_dim=cfg.expert_hidden_dim // factor,
                   top_k=cfg.top_k * factor, n_shared_experts=cfg.n_shared_experts * factor)


# --- wrong answers -------------------------------------------------------------------------------
def equal_cache_twin_without_rope(cfg):
    head_dim = cfg.d_model // cfg.n_heads
    kv_heads = {"mha": cfg.n_heads, "gqa": cfg.n_kv_heads, "mqa": 1}[cfg.attention]
    return replace(cfg, attention="mla", kv_latent_dim=2 * kv_heads * head_dim)


def equal_cache_twin_never_refuses(cfg):
    return replace(equal_cache_twin_without_rope(cfg), kv_latent_dim=max(
        1, equal_cache_twin_without_rope(cfg).kv_latent_dim - cfg.resolved().rope_head_dim))


def within_noise_ranges_overlap(a, b):
    """Calls any difference under 0.2 nats noise, whatever the seeds say: a fixed threshold, not a spread."""
    return abs(statistics.fmean(a) - statistics.fmean(b)) < 0.2


def equal_active_variant_shared_fixed(cfg, n_routed_experts):
    """Splits the routed experts but forgets to split the shared expert."""
    factor = n_routed_experts // cfg.n_routed_experts
    return replace(cfg, n_routed_experts=n_routed_experts, expert_hidden_dim=cfg.expert_hidden_dim // factor,
                   top_k=cfg.top_k * factor)


# --- answers that hand the work to the library -----------------------------------------------------
def equal_cache_twin_by_search(cfg):
    want = utils.kv_cache_bytes_per_token(cfg)
    for latent in range(1, 4096):
        twin = replace(cfg, attention="mla", kv_latent_dim=latent)
        if utils.kv_cache_bytes_per_token(twin) == want:
            return twin
    raise ValueError("no latent width fits")


def within_noise_from_the_report(a, b):
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 seeds per run")
    return not compare({"val_loss": spread(a)}, {"val_loss": spread(b)})["resolved"]


CORRECT = {"8.1": equal_cache_twin_right, "8.2": within_noise_right, "8.3": equal_active_variant_right,
           "8.4": "Top-k 1 vs 2 is not resolved: 3 seeds leave a standard error of 0.02 nats; more seeds would."}
WRONG = [
    ("8.1", equal_cache_twin_without_rope, "the shared RoPE key counts too"),
    ("8.1", equal_cache_twin_never_refuses, "raise ValueError"),
    ("8.1", equal_cache_twin_by_search, "utils.kv_cache_bytes_per_token"),
    ("8.2", within_noise_ranges_overlap, "2 * sqrt("),
    ("8.2", within_noise_from_the_report, "ablation.report.spread"),
    ("8.3", equal_active_variant_shared_fixed, "n_shared_experts"),
]

(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_the_study_twins_are_the_chapters():
    """8.1 reproduces section 5's latent widths for the study model: 240, 112 and 48."""
    study = replace(TINY, d_model=128, n_heads=4, rope_head_dim=16, n_layers=3)
    widths = [equal_cache_twin_right(replace(study, attention=kind, n_kv_heads=kv)).kv_latent_dim
              for kind, kv in (("mha", None), ("gqa", 2), ("mqa", None))]
    assert widths == [240, 112, 48]


def test_the_hidden_noise_cases_have_the_verdicts_worked_out_by_hand():
    """8.2's expected verdicts come from ablation.report.compare; these are them, worked out by hand."""
    by_hand = [True, False, True, False, True, False]     # e.g. case 5: SE 0.071, |diff| 0.11 <= 0.141: noise
    assert [_within(a, b) for a, b in WITHIN_CASES] == by_hand
