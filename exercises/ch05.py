"""Hidden cases for the chapter 5 exercises (load balancing).

5.1 `expert_balance_loss(tokens_per_expert, probs, top_k)`: the V2 expert-level loss sum_i f_i P_i,
    with its gradient flowing through P only.
5.2 `lfb_bias_update(bias, tokens_per_expert, gamma)`: one Loss-Free Balancing step (sign rule).
5.3 `max_violation(tokens_per_expert)`: MaxVio = (max_i c_i - mean c) / mean c over the last dim.

References: `Router` (its 'expert' loss and `update_bias`) and the Trainer's `load_stats`; each
check raises AssertionError with a hint that names the likely mistake.
"""

from __future__ import annotations

import torch

from components.router import Router
from trainer import load_stats


def _identity_router(n_experts: int, top_k: int, score: str, **kwargs) -> Router:
    """A Router whose logits are exactly its input (d_model = E, identity gate)."""
    router = Router(n_experts, n_experts, top_k, score=score, **kwargs)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n_experts))
    return router


def _scalar(value, name: str) -> torch.Tensor:
    assert torch.is_tensor(value), f"{name} must return a torch tensor (a 0-d one), got {type(value).__name__}"
    assert value.numel() == 1, f"{name} must return a scalar, got shape {tuple(value.shape)}"
    return value.reshape(())


def _compare_5_1(got: torch.Tensor, want: torch.Tensor, n_tokens: int, n_experts: int, top_k: int,
                 case: str) -> None:
    if torch.isclose(got.detach().float(), want, rtol=1e-4, atol=1e-6):
        return
    ratio = (got.detach().float() / want).item()
    if abs(ratio - top_k) < 1e-3:
        raise AssertionError(f"{case}: your value is K times too large (Mixtral/HF's scale, = K at uniform "
                             "routing): DeepSeek's f_i = E / (K N) * c_i includes 1/K, so uniform routing gives 1")
    if abs(ratio - n_tokens * top_k / n_experts) < 1e-3:
        raise AssertionError(f"{case}: you used the raw counts c_i; scale them to f_i = E / (K N) * c_i")
    if abs(ratio - 1 / n_experts) < 1e-3 or abs(ratio - top_k / n_experts) < 1e-3:
        raise AssertionError(f"{case}: f_i needs the factor E (f_i = 1 for an expert with exactly its fair "
                             "share): f_i = E / (K N) * c_i")
    raise AssertionError(f"{case}: expected sum_i f_i P_i = {want.item():.5f} (what Router reports), got "
                         f"{got.item():.5f}; f_i = E / (K N) * c_i and P_i is the mean over TOKENS (dim 0) of probs")


# --- 5.1 ------------------------------------------------------------------------------------
def check_5_1(student_fn) -> None:
    # hand case: uniform probabilities and perfectly even counts -> exactly 1
    counts, probs = torch.tensor([3, 3, 3, 3]), torch.full((6, 4), 0.25)
    got = _scalar(student_fn(counts.clone(), probs.clone(), 2), "expert_balance_loss")
    _compare_5_1(got, torch.tensor(1.0), 6, 4, 2, "uniform routing (N=6, E=4, K=2, c_i = 3, P_i = 1/4)")

    gen = torch.Generator().manual_seed(51)
    for n_tokens, n_experts, top_k, score, scale in [(16, 4, 2, "softmax", 1.0), (40, 8, 2, "sigmoid", 2.0),
                                                     (25, 6, 3, "softmax", 3.0), (12, 16, 4, "sigmoid", 1.5)]:
        logits = torch.randn(n_tokens, n_experts, generator=gen) * scale
        logits[:, 0] += 1.0                                              # an overloaded expert 0
        router = _identity_router(n_experts, top_k, score, balance_coefs={"expert": 1.0})
        with torch.no_grad():
            out = router(logits)
        scores = logits.softmax(-1) if score == "softmax" else logits.sigmoid()
        probs = (scores / scores.sum(-1, keepdim=True)).requires_grad_(True)
        want = out.losses["expert"]
        got = _scalar(student_fn(out.tokens_per_expert.clone(), probs, top_k), "expert_balance_loss")
        case = f"N={n_tokens}, E={n_experts}, K={top_k}"
        _compare_5_1(got, want, n_tokens, n_experts, top_k, case)
        # the gradient flows through P only: dL/dprobs[t, i] = f_i / N for every token t
        assert got.requires_grad, (f"{case}: the loss has no gradient: keep P_i = probs.mean(0) differentiable "
                                   "(the router learns balance through P; f_i is the constant)")
        (grad,) = torch.autograd.grad(got, probs)
        f = out.tokens_per_expert.float() * n_experts / (top_k * n_tokens)
        if not torch.allclose(grad, (f / n_tokens).expand_as(grad), rtol=1e-4, atol=1e-7):
            raise AssertionError(f"{case}: right value, wrong gradient: f_i must be a constant (computed from "
                                 "the counts, no gradient), so that dL/dprobs[t, i] = f_i / N")


# --- 5.2 ------------------------------------------------------------------------------------
def _reference_update(bias: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    router = Router(4, len(bias), 1, use_bias=True, bias_update_rate=gamma)
    router.bias.copy_(bias)
    router.update_bias(counts)
    return router.bias.clone()


def check_5_2(student_fn) -> None:
    gen = torch.Generator().manual_seed(52)
    cases = [
        (torch.zeros(4), torch.tensor([6, 4, 2, 4]), 0.01),            # hand case: mean 4, two experts at the mean
        (torch.tensor([0.1, -0.2, 0.0, 0.3]), torch.tensor([5, 5, 5, 5]), 0.001),   # balanced: nothing moves
        (torch.randn(8, generator=gen) * 0.1, torch.randint(0, 60, (8,), generator=gen), 0.003),
        (torch.randn(16, generator=gen) * 0.1, torch.randint(0, 200, (16,), generator=gen), 0.05),
    ]
    for bias, counts, gamma in cases:
        want = _reference_update(bias, counts, gamma)
        got = student_fn(bias.clone(), counts.clone(), gamma)
        assert torch.is_tensor(got) and got.shape == bias.shape, \
            f"lfb_bias_update must return the new bias, a tensor of shape {tuple(bias.shape)}"
        got = got.detach().float()
        if torch.allclose(got, want, atol=1e-7):
            continue
        case = f"counts {counts.tolist()}, gamma={gamma}"
        load = counts.float()
        if torch.allclose(got, bias - gamma * torch.sign(load.mean() - load), atol=1e-7):
            raise AssertionError(f"{case}: wrong sign -- an OVERLOADED expert (c_i > mean) must go DOWN, so that "
                                 "it is picked less: b_i += gamma * sign(mean(c) - c_i)")
        if torch.allclose(got, bias + gamma * (load.mean() - load), atol=1e-6):
            raise AssertionError(f"{case}: the step is gamma * SIGN(mean(c) - c_i), not proportional to the "
                                 "imbalance (LFB found the sign rule best; every expert moves by exactly gamma)")
        if torch.allclose(got, gamma * torch.sign(load.mean() - load), atol=1e-7):
            raise AssertionError(f"{case}: return the UPDATED bias, b + gamma * sign(...), not just the step")
        ties = load == load.mean()
        if ties.any() and torch.allclose(got[~ties], want[~ties], atol=1e-7):
            raise AssertionError(f"{case}: an expert exactly at the mean must keep its bias (sign(0) = 0)")
        raise AssertionError(f"{case}: expected {[round(v, 4) for v in want.tolist()]}, "
                             f"got {[round(v, 4) for v in got.tolist()]}")


# --- 5.3 ------------------------------------------------------------------------------------
def _max_vio_rows(counts: torch.Tensor) -> torch.Tensor:
    flat = counts.reshape(-1, counts.shape[-1])
    return torch.tensor([load_stats(row)["max_ratio"] - 1.0 for row in flat]).reshape(counts.shape[:-1])


def check_5_3(student_fn) -> None:
    hand = [([6, 4, 2, 4], 0.5), ([8, 0, 0, 0], 3.0), ([3, 3, 3], 0.0), ([1, 2, 3, 4, 5], 2 / 3)]
    for counts, want in hand:
        got = torch.as_tensor(student_fn(torch.tensor(counts)), dtype=torch.float64)
        assert got.numel() == 1, f"max_violation of one (E,) vector must be a scalar, got shape {tuple(got.shape)}"
        got = got.item()
        if abs(got - want) < 1e-6:
            continue
        c = torch.tensor(counts, dtype=torch.float64)
        if abs(got - c.max().item() / c.mean().item()) < 1e-6:
            raise AssertionError(f"counts {counts}: you returned max/mean = {got:.4f}; MaxVio is (max - mean) / mean, "
                                 "the relative EXCESS of the busiest expert (0 when balanced)")
        if abs(got - (c.max() - c.min()).item() / c.mean().item()) < 1e-6:
            raise AssertionError(f"counts {counts}: use the mean load, not the minimum: (max - mean) / mean")
        if abs(got - (c.max() - c.mean()).item() / c.max().item()) < 1e-6:
            raise AssertionError(f"counts {counts}: divide by the mean load, not the maximum")
        raise AssertionError(f"counts {counts}: expected MaxVio = (max - mean) / mean = {want:.4f}, got {got:.4f} "
                             "(integer tensors: convert to float before dividing)")
    gen = torch.Generator().manual_seed(53)
    for shape in [(5, 8), (3, 2, 16)]:                                  # (steps, E) and (steps, layers, E)
        counts = torch.randint(0, 100, shape, generator=gen)
        want = _max_vio_rows(counts)
        got = torch.as_tensor(student_fn(counts.clone()), dtype=torch.float64)
        assert tuple(got.shape) == tuple(shape[:-1]), \
            f"counts of shape {shape}: reduce over the LAST dim (experts) only, expected shape {shape[:-1]}, " \
            f"got {tuple(got.shape)}"
        assert torch.allclose(got, want.double(), atol=1e-6), \
            f"counts of shape {shape}: wrong values; compute (max - mean) / mean along dim -1 for every row"


CHECKS = {"5.1": check_5_1, "5.2": check_5_2, "5.3": check_5_3}
