"""Hidden cases for the chapter 5 exercises (load balancing).

5.1 `expert_balance_loss(tokens_per_expert, probs, top_k)`: the V2 expert-level loss sum_i f_i P_i,
    with its gradient flowing through P only.
5.2 `lfb_simulation(logits, top_k, gamma, n_steps)`: Loss-Free Balancing run for n_steps on a router
    whose scores do not change: select by score + bias, count, move the bias by the sign rule, repeat.
5.3 `max_violation(tokens_per_expert)`: MaxVio = (max_i c_i - mean c) / mean c over the last dim.
5.4 written: the auxiliary loss against the aux-loss-free bias.

References: `Router` (its 'expert' loss, its selection and `update_bias`) and the Trainer's
`load_stats`; each check raises AssertionError with a hint that names the likely mistake. The library
functions an exercise asks for are switched off while the answer runs (exercises/guard.py).
"""

from __future__ import annotations

import torch

from components.router import Router, balance_f_times_p
from exercises import Exercise
from trainer import load_stats, load_summary


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
    _compare_5_1(got, balance_f_times_p(counts, probs, 2), 6, 4, 2, "uniform routing (N=6, E=4, K=2, c_i = 3, "
                 "P_i = 1/4)")

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
def _reference_simulation(logits: torch.Tensor, top_k: int, gamma: float, n_steps: int):
    """The library's router (identity gate: its logits are `logits`) and its own bias update, n_steps times."""
    n_experts = logits.shape[1]
    router = _identity_router(n_experts, top_k, "sigmoid", use_bias=True, bias_update_rate=gamma)
    counts = []
    with torch.no_grad():
        for _ in range(n_steps):
            out = router(logits)
            counts.append(out.tokens_per_expert)
            router.update_bias(out.tokens_per_expert)
    return router.bias.clone(), torch.stack(counts)                    # (E,), (n_steps, E)


def _as_simulation(result, n_steps: int, n_experts: int):
    assert isinstance(result, (tuple, list)) and len(result) == 2, \
        f"lfb_simulation must return the pair (bias, counts), got {type(result).__name__}"
    bias, counts = result
    assert torch.is_tensor(bias) and tuple(bias.shape) == (n_experts,), \
        f"the final bias should be an (E,) = ({n_experts},) tensor, got {tuple(getattr(bias, 'shape', ()))}"
    assert torch.is_tensor(counts) and tuple(counts.shape) == (n_steps, n_experts), \
        f"counts should be (n_steps, E) = {(n_steps, n_experts)}: each step's selections per expert, got " \
        f"{tuple(getattr(counts, 'shape', ()))}"
    return bias.detach().float(), counts.detach().long()


def check_5_2(student_fn) -> None:
    gen = torch.Generator().manual_seed(52)
    # one step first: the counts are the router's, and the update is the sign rule
    logits = torch.randn(24, 6, generator=gen)
    logits[:, 0] += 2.0                                                 # expert 0 overloaded
    want_bias, want_counts = _reference_simulation(logits, 2, 0.01, 1)
    bias, counts = _as_simulation(student_fn(logits.clone(), 2, 0.01, 1), 1, 6)
    where = "one step, N=24 tokens, E=6, K=2, gamma=0.01"
    if not torch.equal(counts, want_counts):
        raise AssertionError(f"{where}: counts {counts[0].tolist()}, expected {want_counts[0].tolist()}: each token "
                             "selects its top-K experts by sigmoid(logits) + bias (the bias is 0 at the start); "
                             "c_i = how many tokens selected expert i")
    load = want_counts[0].float()
    if torch.allclose(bias, -want_bias, atol=1e-7) and want_bias.abs().sum() > 0:
        raise AssertionError(f"{where}: wrong sign -- an OVERLOADED expert (c_i > mean) must go DOWN, so that it is "
                             "picked less: b_i += gamma * sign(mean(c) - c_i)")
    if torch.allclose(bias, 0.01 * (load.mean() - load), atol=1e-6):
        raise AssertionError(f"{where}: the step is gamma * SIGN(mean(c) - c_i), not proportional to the imbalance "
                             "(LFB found the sign rule best; every expert moves by exactly gamma or 0)")
    if not torch.allclose(bias, want_bias, atol=1e-6):
        raise AssertionError(f"{where}: after one step the bias should be {[round(v, 4) for v in want_bias.tolist()]}, "
                             f"got {[round(v, 4) for v in bias.tolist()]}: b_i += gamma * sign(mean(c) - c_i)")
    # then many steps: the bias must feed back into the next step's selection
    for n_tokens, n_experts, top_k, gamma, n_steps, skew in [(32, 8, 2, 0.02, 40, 1.5), (16, 4, 1, 0.05, 25, 1.0),
                                                             (64, 16, 4, 0.005, 12, 2.0)]:
        logits = torch.randn(n_tokens, n_experts, generator=gen)
        logits[:, :2] += skew                                           # two crowded experts
        want_bias, want_counts = _reference_simulation(logits, top_k, gamma, n_steps)
        bias, counts = _as_simulation(student_fn(logits.clone(), top_k, gamma, n_steps), n_steps, n_experts)
        where = f"N={n_tokens}, E={n_experts}, K={top_k}, gamma={gamma}, {n_steps} steps"
        if not torch.equal(counts, want_counts):
            step = int((counts != want_counts).any(-1).nonzero()[0])
            if step > 0 and all(torch.equal(counts[s], counts[0]) for s in range(n_steps)):
                raise AssertionError(f"{where}: the counts never change: the bias must feed back -- each step "
                                     "selects by sigmoid(logits) + the bias as updated by the previous steps")
            raise AssertionError(f"{where}: the counts first differ at step {step}: expected "
                                 f"{want_counts[step].tolist()}, got {counts[step].tolist()} (select by "
                                 "sigmoid(logits) + bias, count, then update the bias once per step)")
        if not torch.allclose(bias, want_bias, atol=1e-5):
            raise AssertionError(f"{where}: the counts are right but the final bias is not: return the bias after "
                                 f"all {n_steps} updates; expected {[round(v, 4) for v in want_bias.tolist()]}")


# --- 5.3 ------------------------------------------------------------------------------------
def _max_vio_rows(counts: torch.Tensor) -> torch.Tensor:
    flat = counts.reshape(-1, counts.shape[-1])
    return torch.tensor([load_stats(row)["max_ratio"] - 1.0 for row in flat]).reshape(counts.shape[:-1])


def check_5_3(student_fn) -> None:
    for counts in ([6, 4, 2, 4], [8, 0, 0, 0], [3, 3, 3], [1, 2, 3, 4, 5]):
        want = load_stats(torch.tensor(counts))["max_ratio"] - 1.0
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


EXERCISES = {
    "5.1": Exercise("5.1", "expert_balance_loss", 3, check_5_1,
                    forbidden=(balance_f_times_p, Router.forward, Router._balance_losses),
                    why="compute f_i and P_i yourself"),
    "5.2": Exercise("5.2", "lfb_simulation", 4, check_5_2, forbidden=(Router.forward, Router.update_bias),
                    why="write the selection, the counts and the sign update with tensor operations"),
    "5.3": Exercise("5.3", "max_violation", 3, check_5_3, forbidden=(load_stats, load_summary),
                    why="compute (max - mean) / mean yourself"),
    "5.4": Exercise("5.4", "answer_5_4", 2),
}
