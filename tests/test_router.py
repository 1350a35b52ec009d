"""Router: selection, weights, the aux-loss-free bias, balance losses, group-limited routing.

Hand-made cases use an identity gate (d_model = E), so the input rows ARE the router logits and the
expected numbers can be computed in plain Python.
"""

import math

import pytest
import torch

from components.router import Router


def identity_router(E, K, **kwargs):
    router = Router(d_model=E, n_experts=E, top_k=K, **kwargs)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    return router


def logit(p):
    return math.log(p / (1 - p))


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_shapes_and_counts(score):
    torch.manual_seed(0)
    router = Router(16, n_experts=6, top_k=2, score=score)
    out = router(torch.randn(10, 16))
    assert out.weights.shape == out.expert_ids.shape == (10, 2)
    assert out.expert_ids.dtype == torch.long and out.tokens_per_expert.dtype == torch.long
    assert out.tokens_per_expert.shape == (6,) and out.tokens_per_expert.sum().item() == 10 * 2
    assert torch.equal(out.tokens_per_expert, torch.bincount(out.expert_ids.flatten(), minlength=6))
    assert out.losses == {} and out.aux_loss.item() == 0.0
    assert all(len(set(row)) == 2 for row in out.expert_ids.tolist())   # K distinct experts per token


def test_sigmoid_weights_sum_to_route_scale():
    torch.manual_seed(0)
    out = Router(16, n_experts=8, top_k=3, score="sigmoid", route_scale=2.5)(torch.randn(12, 16))
    torch.testing.assert_close(out.weights.sum(-1), torch.full((12,), 2.5), atol=1e-6, rtol=0)


def test_softmax_weights_are_the_gathered_probabilities():
    torch.manual_seed(0)
    router = Router(16, n_experts=8, top_k=2, score="softmax", route_scale=1.5)
    x = torch.randn(12, 16)
    out = router(x)
    probs = (x @ router.gate.weight.T).softmax(-1)
    top = probs.topk(2, dim=-1)
    assert torch.equal(out.expert_ids.sort(-1).values, top.indices.sort(-1).values)
    torch.testing.assert_close(out.weights, 1.5 * probs.gather(1, out.expert_ids), atol=1e-6, rtol=1e-6)


def test_bias_changes_selection_never_weights():
    # scores of expert 0..3: 0.1 (lowest), 0.6, 0.7, 0.8 -> unbiased top-2 = {2, 3}
    x = torch.tensor([[logit(0.1), logit(0.6), logit(0.7), logit(0.8)]])
    router = identity_router(4, 2, score="sigmoid", use_bias=True)
    assert set(router(x).expert_ids[0].tolist()) == {2, 3}
    # a big bias on expert 0 forces it in; its weight is still its UNBIASED score, renormalised
    router.bias[0] = 10.0
    out = router(x)
    assert set(out.expert_ids[0].tolist()) == {0, 3}
    weight_of = dict(zip(out.expert_ids[0].tolist(), out.weights[0].tolist(), strict=True))
    assert weight_of[0] == pytest.approx(0.1 / (0.1 + 0.8), abs=1e-6)
    assert weight_of[3] == pytest.approx(0.8 / (0.1 + 0.8), abs=1e-6)
    # a bias that keeps the same selection leaves the weights bit-identical
    torch.manual_seed(0)
    xs = torch.randn(20, 4)
    router.bias.zero_()
    before = router(xs)
    router.bias.fill_(0.3)                       # same shift for all experts: same ranking
    after = router(xs)
    assert torch.equal(before.expert_ids, after.expert_ids) and torch.equal(before.weights, after.weights)


def test_update_bias_sign_rule_and_load_moves():
    router = Router(8, n_experts=4, top_k=1, use_bias=True, bias_update_rate=0.01)
    router.update_bias(torch.tensor([10, 2, 4, 0]))        # mean 4 -> sign(4 - c) = [-1, +1, 0, +1]
    torch.testing.assert_close(router.bias, torch.tensor([-0.01, 0.01, 0.0, 0.01]), atol=0, rtol=0)
    # an overloaded expert loses load as the bias is updated step after step
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    with torch.no_grad():
        router.gate.weight.mul_(0.01)                       # near-tied scores ...
        router.bias.copy_(torch.tensor([0.2, 0.0, 0.0, 0.0]))   # ... and expert 0 takes every token
    loads = [router(x).tokens_per_expert]
    for _ in range(10):
        router.update_bias(loads[-1])
        loads.append(router(x).tokens_per_expert)
    assert loads[0][0] == 64 and all(load[0] == 64 for load in loads[:10])
    # ten steps of exactly -gamma for the overloaded expert, +gamma for the idle ones ...
    torch.testing.assert_close(router.bias, torch.full((4,), 0.1), atol=1e-6, rtol=0)
    # ... after which expert 0 has lost load and the others have gained some
    assert loads[-1][0] < 64 and (loads[-1][1:] > 0).all()
    # no-op without use_bias
    plain = Router(8, n_experts=4, top_k=1)
    plain.update_bias(torch.tensor([10, 2, 4, 0]))
    assert plain.bias.abs().sum() == 0


def test_bias_is_an_fp32_buffer_without_grad():
    router = Router(8, n_experts=4, top_k=2, use_bias=True)
    assert router.bias.dtype == torch.float32 and not router.bias.requires_grad
    assert "bias" in router.state_dict() and "gate.weight" in router.state_dict()
    assert all(p is not router.bias for p in router.parameters())
    assert [name for name, _ in router.named_parameters()] == ["gate.weight"]


def test_bias_stays_fp32_when_the_model_is_cast():
    from components.deepseek_model import DeepSeekModel
    from constants import TINY

    model = DeepSeekModel(TINY)
    router = model.routers()[0]
    learnt = torch.tensor([0.1234567, -0.0012345, 0.0004321, -0.3217654])
    router.bias.copy_(learnt)
    model.to(torch.bfloat16)
    assert router.gate.weight.dtype == torch.bfloat16                  # the weights do follow the cast
    assert router.bias.dtype == torch.float32
    torch.testing.assert_close(router.bias, learnt, rtol=0, atol=0)     # not rounded through bf16
    router.update_bias(torch.tensor([10, 0, 0, 0]))
    torch.testing.assert_close(router.bias - learnt, torch.tensor([-1.0, 1.0, 1.0, 1.0]) * router.bias_update_rate)
    model.half().float()
    torch.testing.assert_close(router.bias - learnt, torch.tensor([-1.0, 1.0, 1.0, 1.0]) * router.bias_update_rate)
    assert "bias" in dict(router.named_buffers())


def hand_losses(rows, K, score, seq_len):
    """Plain-Python balance losses for logit rows (identity gate)."""
    E, N = len(rows[0]), len(rows)
    if score == "softmax":
        probs = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in rows]
    else:
        sig = [[1 / (1 + math.exp(-v)) for v in r] for r in rows]
        probs = [[v / sum(r) for v in r] for r in sig]
    picks = [sorted(range(E), key=lambda i, r=r: -r[i])[:K] for r in rows]   # same ranking for both scores

    def f_dot_p(tokens):
        T = len(tokens)
        f = [E / (K * T) * sum(i in picks[t] for t in tokens) for i in range(E)]
        P = [sum(probs[t][i] for t in tokens) / T for i in range(E)]
        return sum(fi * pi for fi, pi in zip(f, P, strict=True))

    seqs = [list(range(s, s + seq_len)) for s in range(0, N, seq_len)]
    mean_p = [sum(p[i] for p in probs) / N for i in range(E)]
    return {
        "expert": f_dot_p(list(range(N))),
        "sequence": sum(f_dot_p(s) for s in seqs) / len(seqs),
        "z": sum(math.log(sum(math.exp(v) for v in r)) ** 2 for r in rows) / N,
        "kl": math.log(E) + sum(p * math.log(p) for p in mean_p),
    }


COEFS = {"expert": 0.01, "sequence": 0.1, "z": 0.001, "kl": 0.5}


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_balance_losses_match_hand_computation(score):
    rows = [[2.0, 0.5, -1.0, 0.0], [1.5, 1.0, 0.2, -0.3], [-0.5, 0.1, 2.2, 0.4], [0.3, 1.7, -0.2, 0.9],
            [1.1, -0.4, 0.6, 0.0], [0.0, 0.8, 1.4, -1.2]]
    router = identity_router(4, 2, score=score, balance_coefs=COEFS)
    out = router(torch.tensor(rows), seq_len=3)
    expected = hand_losses(rows, 2, score, seq_len=3)
    assert set(out.losses) == set(COEFS)
    for name, coef in COEFS.items():
        assert out.losses[name].item() == pytest.approx(coef * expected[name], rel=1e-5, abs=1e-8), name
    assert out.aux_loss.item() == pytest.approx(sum(coef * expected[n] for n, coef in COEFS.items()), rel=1e-5)
    # without seq_len the whole batch is one sequence: sequence-wise == expert-level (up to coefficients)
    whole = router(torch.tensor(rows))
    torch.testing.assert_close(whole.losses["sequence"] / COEFS["sequence"], whole.losses["expert"] / COEFS["expert"])


def test_balance_losses_minimal_at_uniform_routing():
    # token t prefers expert t (mod E): counts are equal and the mean probability is exactly uniform
    E = 4
    uniform = torch.eye(E).repeat(2, 1) * 3.0                      # (8, 4), two sequences of 4 tokens
    skewed = torch.zeros(8, E)
    skewed[:, 0] = 3.0                                             # everybody prefers expert 0
    router = identity_router(E, 1, score="softmax", balance_coefs=COEFS)
    u, s = router(uniform, seq_len=4), router(skewed, seq_len=4)
    assert u.losses["expert"].item() == pytest.approx(COEFS["expert"], rel=1e-6)
    assert u.losses["sequence"].item() == pytest.approx(COEFS["sequence"], rel=1e-6)
    assert u.losses["kl"].item() == pytest.approx(0.0, abs=1e-7)
    for name in ("expert", "sequence", "kl"):
        assert s.losses[name] > u.losses[name] + 1e-4, name


@pytest.mark.parametrize("name", sorted(COEFS))
def test_gradient_flows_from_each_loss_to_the_gate(name):
    torch.manual_seed(0)
    router = Router(8, n_experts=4, top_k=2, score="sigmoid", balance_coefs={name: 1.0})
    out = router(torch.randn(6, 8), seq_len=3)
    assert set(out.losses) == {name}
    out.aux_loss.backward()
    assert router.gate.weight.grad is not None and router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_group_limited_routing(score):
    # groups of 2 experts: group 0 = (0.99, 0.01), groups 1, 2 = (0.6, 0.6), group 3 = (0.1, 0.1)
    probs = [0.99, 0.01, 0.6, 0.6, 0.6, 0.6, 0.1, 0.1]
    x = torch.tensor([[logit(p) for p in probs]])
    router = identity_router(8, 2, score=score, n_groups=4, topk_groups=2)
    picked = set(router(x).expert_ids[0].tolist())
    if score == "sigmoid":     # top-2 sums: 1.0, 1.2, 1.2, 0.2 -> groups 1, 2: the best expert 0 is excluded
        assert picked <= {2, 3, 4, 5} and len(picked) == 2
    else:                      # group max: group 0 is kept, expert 0 is picked
        assert 0 in picked
    # random inputs: experts always come from the `topk_groups` best groups
    torch.manual_seed(0)
    router = Router(16, n_experts=8, top_k=3, score=score, n_groups=4, topk_groups=2, use_bias=True)
    router.bias.copy_(torch.linspace(-0.2, 0.2, 8))
    x = torch.randn(50, 16)
    ids = router(x).expert_ids
    logits = x @ router.gate.weight.T
    key = (logits.softmax(-1) if score == "softmax" else logits.sigmoid()) + router.bias
    grouped = key.view(50, 4, 2)
    group_score = grouped.amax(-1) if score == "softmax" else grouped.sum(-1)   # top-2 of 2 = the sum
    kept = group_score.topk(2, dim=-1).indices
    for token_ids, token_groups in zip(ids.tolist(), kept.tolist(), strict=True):
        assert {i // 2 for i in token_ids} <= set(token_groups)


def test_noise_only_in_training_and_only_on_selection():
    torch.manual_seed(0)
    router = Router(8, n_experts=6, top_k=2, score="sigmoid", noise_std=1.0)
    x = torch.randn(40, 8)
    router.eval()
    assert torch.equal(router(x).expert_ids, router(x).expert_ids)
    router.train()
    noisy = router(x)
    scores = (x @ router.gate.weight.T).sigmoid().gather(1, noisy.expert_ids)
    torch.testing.assert_close(noisy.weights, scores / scores.sum(-1, keepdim=True), atol=1e-6, rtol=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="score"):
        Router(8, 4, 2, score="relu")
    with pytest.raises(ValueError, match="unknown balance"):
        Router(8, 4, 2, balance_coefs={"switch": 0.1})
    with pytest.raises(ValueError, match="n_groups"):
        Router(8, 6, 2, n_groups=4)
    with pytest.raises(ValueError, match="top_k"):
        Router(8, 8, 3, n_groups=4, topk_groups=1)
