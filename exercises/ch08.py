"""Hidden cases for chapter 8 (ablations).

8.1 design MLA's equal-cache twin of an MHA/GQA/MQA baseline (the study of section 5)
8.2 is a difference between two runs within seed noise? (two standard errors of the difference)
8.3 design a finer-grained MoE with the same active AND total expert parameters (DeepSeekMoE §3.1)
8.4 written: a comparison the committed studies do not resolve, and what would resolve it

References: `utils.kv_cache_bytes_per_token`, `ablation.report` (spread, compare: the verdicts of the
chapter's tables) and the parameter counts of real `DeepSeekModel`s. The library functions an exercise
asks for are switched off while the answer runs (exercises/guard.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import torch

import utils
from ablation.report import compare, spread, summarize, verdict_text
from components.deepseek_model import DeepSeekModel
from constants import TINY
from exercises import Exercise
from utils import count_active_parameters, count_parameters

# --- 8.1 ------------------------------------------------------------------------------------
_STUDY = replace(TINY, d_model=128, n_heads=4, rope_head_dim=16, n_layers=3)   # the chapter's study model


def check_equal_cache_twin(student_fn) -> None:
    cases = [replace(_STUDY, attention="mha"), replace(_STUDY, attention="gqa", n_kv_heads=2),
             replace(_STUDY, attention="mqa"), replace(TINY, attention="gqa", n_kv_heads=2, rope_head_dim=8),
             replace(TINY, attention="mha", n_heads=8, n_layers=5)]
    for base in cases:
        want = utils.kv_cache_bytes_per_token(base)
        where = (f"a {base.attention.upper()} baseline (d_model={base.d_model}, n_heads={base.n_heads}, "
                 f"n_kv_heads={base.resolved().n_kv_heads}, rope_head_dim={base.resolved().rope_head_dim})")
        twin = student_fn(base)
        assert dataclasses.is_dataclass(twin) and isinstance(twin, type(base)), \
            f"{where}: return a ModelConfig (dataclasses.replace of the baseline), got {type(twin).__name__}"
        assert twin.attention == "mla", f"{where}: the twin should use attention='mla', got {twin.attention!r}"
        changed = {f.name for f in dataclasses.fields(base) if getattr(twin, f.name) != getattr(base, f.name)}
        extra = changed - {"attention", "kv_latent_dim"}
        assert not extra, f"{where}: change only attention and kv_latent_dim; you also changed {sorted(extra)}"
        got = utils.kv_cache_bytes_per_token(twin)
        if got == want:
            continue
        rope = base.resolved().rope_head_dim * base.n_layers * 2
        if got == want + rope:
            raise AssertionError(f"{where}: the twin caches {got:,} bytes per token, {rope:,} too many: MLA caches "
                                 "kv_latent_dim + rope_head_dim numbers per token and layer (the shared RoPE key "
                                 "counts too)")
        if base.attention == "mqa" and twin.kv_latent_dim + base.resolved().rope_head_dim == 2 * base.d_model:
            raise AssertionError(f"{where}: MQA keeps ONE key/value head of head_dim = d_model / n_heads numbers")
        raise AssertionError(f"{where}: the baseline caches {want:,} bytes per token (bf16, all layers), your twin "
                             f"{got:,} (kv_latent_dim={twin.kv_latent_dim})")
    impossible = replace(TINY, attention="mqa", d_model=32, n_heads=8, rope_head_dim=8)   # 2 * head_dim 4 = 8 = R
    try:
        twin = student_fn(impossible)
    except ValueError:
        return
    raise AssertionError("an MQA baseline with head_dim=4 caches 2 * 4 = 8 numbers per token and layer, no more than "
                         "the RoPE key alone (rope_head_dim=8): no latent fits, so raise ValueError (got "
                         f"kv_latent_dim={getattr(twin, 'kv_latent_dim', twin)!r})")


# --- 8.2 ------------------------------------------------------------------------------------
WITHIN_CASES = [([5.10, 5.30], [5.00, 5.04]), ([5.10, 5.12], [4.80, 4.83]), ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]),
                ([5.00, 5.02, 5.04], [5.10, 5.12, 5.14]), ([5.00, 5.10], [5.11, 5.21]), ([5.00, 5.01], [5.10, 5.11])]


def _within(a, b) -> bool:
    """The opposite of the report's verdict: not resolved means within seed noise."""
    verdict = compare({"val_loss": spread(a)}, {"val_loss": spread(b)})
    return not verdict["resolved"]


def check_within_noise(student_fn) -> None:
    for a, b in WITHIN_CASES:
        want = _within(a, b)
        got = student_fn(a, b)
        assert isinstance(got, bool), f"return True or False, got {type(got).__name__}"
        assert got == want, (
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


_CACHE_FORMULAS = (utils.kv_cache_values_per_token, utils.kv_cache_bytes_per_token, utils.kv_cache_bytes)

EXERCISES = {
    "8.1": Exercise("8.1", "equal_cache_twin", 3, check_equal_cache_twin, forbidden=_CACHE_FORMULAS,
                    why="write the two cache formulas (chapters 1 and 2) and solve for kv_latent_dim"),
    "8.2": Exercise("8.2", "within_noise", 3, check_within_noise, forbidden=(compare, spread, summarize, verdict_text),
                    why="compute the means, sample variances and the standard error yourself (statistics is fine)"),
    "8.3": Exercise("8.3", "equal_active_variant", 4, check_equal_active_variant,
                    forbidden=(DeepSeekModel.__init__, count_parameters, count_active_parameters,
                               utils.parameter_count_from_config),
                    why="work the sizes out from the config fields; do not build models to search"),
    "8.4": Exercise("8.4", "answer_8_4", 2),
}
