"""Chapter 8 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs with a hint, a right one PASSes."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from tests.exercise_checks import exercise_checks


# --- correct answers ---------------------------------------------------------------------------
def seed_stats_right(records, name):
    losses = [r["final_val_loss"] for r in records if r["name"] == name]
    return {"mean": statistics.fmean(losses), "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "min": min(losses), "max": max(losses), "n": len(losses)}


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
def seed_stats_population_std(records, name):
    out = seed_stats_right(records, name)
    return out | {"std": statistics.pstdev([r["final_val_loss"] for r in records if r["name"] == name])}


def within_noise_ranges_overlap(a, b):
    """Calls any difference under 0.2 nats noise, whatever the seeds say: a fixed threshold, not a spread."""
    return abs(statistics.fmean(a) - statistics.fmean(b)) < 0.2


def equal_active_variant_shared_fixed(cfg, n_routed_experts):
    """Splits the routed experts but forgets to split the shared expert."""
    factor = n_routed_experts // cfg.n_routed_experts
    return replace(cfg, n_routed_experts=n_routed_experts, expert_hidden_dim=cfg.expert_hidden_dim // factor,
                   top_k=cfg.top_k * factor)


CORRECT = {"8.1": seed_stats_right, "8.2": within_noise_right, "8.3": equal_active_variant_right}
WRONG = [
    ("8.1", seed_stats_population_std, "sample std"),
    ("8.2", within_noise_ranges_overlap, "2 * sqrt("),
    ("8.3", equal_active_variant_shared_fixed, "n_shared_experts"),
]

test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
    exercise_checks(CORRECT, WRONG)
