"""Hidden cases for chapter 8 (ablations).

8.1 mean and spread over seeds of one run, from ablation records (`python -m ablation`'s JSON dicts)
8.2 is a difference between two runs within seed noise? (two standard errors of the difference)
8.3 design a finer-grained MoE with the same active AND total expert parameters (DeepSeekMoE §3.1)
References: `ablation.report.spread` and the parameter counts of real `DeepSeekModel`s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ablation.report import spread
from components.deepseek_model import DeepSeekModel
from constants import TINY
from utils import count_active_parameters, count_parameters


def _record(name: str, seed: int, loss: float) -> dict:
    return {"name": name, "seed": seed, "final_val_loss": loss}


def check_seed_stats(student_fn) -> None:
    records = [_record("mla", 0, 5.10), _record("mha", 0, 5.00), _record("mla", 1, 5.30),
               _record("mha", 1, 5.04), _record("mla", 2, 5.20), _record("mqa", 0, 5.5)]
    for name in ("mla", "mha", "mqa"):
        want = spread([r["final_val_loss"] for r in records if r["name"] == name])
        got = student_fn(records, name)
        assert isinstance(got, dict), f"return a dict with mean, std, min, max, n; got {type(got).__name__}"
        missing = {"mean", "std", "min", "max", "n"} - set(got)
        assert not missing, f"the dict lacks {sorted(missing)}"
        assert got["n"] == want["n"], f"{name}: n should count that run's seeds ({want['n']}), got {got['n']}"
        for key in ("mean", "min", "max"):
            assert math.isclose(got[key], want[key], abs_tol=1e-9), f"{name}: {key} should be {want[key]:.4f}"
        if want["n"] > 1 and not math.isclose(got["std"], want["std"], abs_tol=1e-9):
            population = _pstdev([r["final_val_loss"] for r in records if r["name"] == name])
            hint = (" - that is the population std (divides by n); use the sample std, dividing by n-1"
                    if math.isclose(got["std"], population, abs_tol=1e-9) else "")
            raise AssertionError(f"{name}: std should be {want['std']:.4f} (sample std, ddof=1), "
                                 f"got {got['std']:.4f}{hint}")
        if want["n"] == 1:
            assert got["std"] == 0.0, "with a single seed, report std 0.0 (no spread can be measured)"


def _pstdev(values) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _within(a, b) -> bool:
    sa, sb = spread(a), spread(b)
    se = math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])
    return abs(sa["mean"] - sb["mean"]) <= 2 * se


def check_within_noise(student_fn) -> None:
    cases = [
        ([5.10, 5.30], [5.00, 5.04], True),       # means differ by 0.18, but seed 0 vs 1 differ by 0.2
        ([5.10, 5.12], [4.80, 4.83], False),      # 0.3 apart, seeds agree to 0.03: a real difference
        ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0], True),   # identical
        ([5.00, 5.02, 5.04], [5.10, 5.12, 5.14], False),
        ([5.00, 5.10], [5.11, 5.21], True),       # se = 0.071: 0.11 <= 0.141
        ([5.00, 5.01], [5.10, 5.11], False),      # se = 0.0071: 0.10 > 0.014
    ]
    for a, b, want in cases:
        got = student_fn(a, b)
        assert isinstance(got, bool), f"return True or False, got {type(got).__name__}"
        assert got == _within(a, b) == want, (
            f"within_noise({a}, {b}) should be {want}: compare |mean_a - mean_b| with 2 * sqrt(s_a^2/n_a + "
            f"s_b^2/n_b), s the sample std (ddof=1)")
        assert student_fn(b, a) == got, "the answer must not depend on the order of the two runs"
    try:
        student_fn([5.0], [5.1, 5.2])
    except ValueError:
        pass
    else:
        raise AssertionError("one seed gives no spread: raise ValueError when a run has fewer than 2 seeds")


def _expert_params(cfg) -> tuple[int, int]:
    """(active, total) parameters of a model built from cfg, router gates excluded (they grow with E)."""
    torch.manual_seed(0)
    model = DeepSeekModel(cfg)
    gates = sum(r.gate.weight.numel() for r in model.routers())
    return count_active_parameters(model) - gates, count_parameters(model) - gates


def check_equal_active_variant(student_fn) -> None:
    base = replace(TINY, vocab_size=64, n_routed_experts=4, n_shared_experts=1, top_k=2, expert_hidden_dim=128,
                   dense_hidden_dim=384)
    for factor in (2, 4):
        new = base.n_routed_experts * factor
        cfg = student_fn(base, new)
        assert cfg.n_routed_experts == new, f"the variant should have {new} routed experts, got {cfg.n_routed_experts}"
        want_active, want_total = _expert_params(base)
        active, total = _expert_params(cfg)
        assert active == want_active, (
            f"{new} experts: active parameters {active:,} != base {want_active:,}; split each expert's hidden width "
            f"by {factor} and multiply top_k AND n_shared_experts by {factor} (shared experts are always active)")
        assert total == want_total, f"{new} experts: total parameters {total:,} != base {want_total:,}"
        assert cfg.resolved().dense_hidden_dim == base.resolved().dense_hidden_dim, \
            "leave the dense layers (and everything else) unchanged"
        assert cfg.d_model == base.d_model and cfg.n_layers == base.n_layers
    try:
        student_fn(base, 6)
    except ValueError:
        pass
    else:
        raise AssertionError("6 experts from 4 is not a whole split factor: raise ValueError")


CHECKS = {"8.1": check_seed_stats, "8.2": check_within_noise, "8.3": check_equal_active_variant}
