"""MoE: sort dispatch == dense reference, capacity dropping, gradients, and Hugging Face DeepseekV3MoE."""

import math

import pytest
import torch

from components.moe import MoE, MoEStats, moe_dense_reference


def make_moe(n_shared=1, score="sigmoid", seed=0, **kwargs):
    torch.manual_seed(seed)
    return MoE(d_model=16, expert_hidden_dim=24, n_routed_experts=6, n_shared_experts=n_shared, top_k=2,
               score=score, **kwargs)


def routed_with_gates(moe, tokens, gates):
    """sum_e gates[:, e] * expert_e(tokens) + shared(tokens), gates (N, E)."""
    y = sum(gates[:, e, None] * expert(tokens) for e, expert in enumerate(moe.experts))
    return y + sum((shared(tokens) for shared in moe.shared_experts), torch.zeros_like(tokens))


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n_shared", [0, 1, 2])
def test_sort_dispatch_equals_dense_reference(score, n_shared):
    moe = make_moe(n_shared, score, route_scale=1.7, n_groups=3, topk_groups=2, use_bias=True)
    moe.router.bias.copy_(torch.linspace(-0.1, 0.1, 6))
    x = torch.randn(3, 7, 16)
    y, stats = moe(x)
    assert y.shape == x.shape and isinstance(stats, MoEStats)
    assert len(moe.shared_experts) == n_shared and len(moe.experts) == 6
    torch.testing.assert_close(y, moe_dense_reference(moe, x), atol=1e-5, rtol=1e-5)
    assert stats.tokens_per_expert.sum().item() == 3 * 7 * 2 and stats.dropped_tokens.item() == 0


def test_stats_carry_router_losses():
    moe = make_moe(balance_coefs={"expert": 0.01, "sequence": 0.001})
    _, stats = moe(torch.randn(2, 5, 16))
    assert set(stats.losses) == {"expert", "sequence"}
    torch.testing.assert_close(stats.aux_loss, stats.losses["expert"] + stats.losses["sequence"])
    assert stats.dropped_tokens.dtype == torch.long and stats.tokens_per_expert.shape == (6,)


def test_capacity_drops_exactly_the_late_slots():
    # a huge bias sends every token to experts 0 and 1; capacity = ceil(1.0 * 10 * 2 / 6) = 4 slots each
    moe = make_moe(capacity_factor=1.0, use_bias=True)
    moe.router.bias[:2] = 10.0
    x = torch.randn(1, 10, 16)
    y, stats = moe(x)
    assert stats.tokens_per_expert.tolist() == [10, 10, 0, 0, 0, 0]     # demand, before dropping
    assert stats.dropped_tokens.item() == (10 - 4) * 2
    tokens = x[0]
    route = moe.router(tokens)
    gates = torch.zeros(10, 6).scatter_(1, route.expert_ids, route.weights)
    gates[4:, :2] = 0.0                                                  # tokens 4..9 lost both slots
    torch.testing.assert_close(y[0], routed_with_gates(moe, tokens, gates), atol=1e-5, rtol=1e-5)
    # tokens past the capacity keep only the shared expert
    torch.testing.assert_close(y[0, 4:], moe.shared_experts[0](tokens[4:]), atol=1e-6, rtol=1e-5)


def test_ample_capacity_drops_nothing():
    moe = make_moe(capacity_factor=float(6 / 2))                       # C = N: no expert can overflow
    x = torch.randn(2, 9, 16)
    y, stats = moe(x)
    assert stats.dropped_tokens.item() == 0
    torch.testing.assert_close(y, moe_dense_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_capacity_bookkeeping_on_a_skewed_router():
    moe = make_moe(capacity_factor=1.25, use_bias=True)
    moe.router.bias.copy_(torch.tensor([0.3, 0.15, 0.0, 0.0, -0.1, -0.2]))
    x = torch.randn(2, 9, 16)
    y, stats = moe(x)
    tokens = x.reshape(18, 16)
    route = moe.router(tokens, seq_len=9)
    capacity = math.ceil(1.25 * 18 * 2 / 6)
    gates, seen, dropped = torch.zeros(18, 6), [0] * 6, 0
    for t in range(18):                                                 # token order = keep order
        for e, w in zip(route.expert_ids[t].tolist(), route.weights[t].tolist(), strict=True):
            if seen[e] < capacity:
                gates[t, e] = w
            else:
                dropped += 1
            seen[e] += 1
    assert dropped > 0 and stats.dropped_tokens.item() == dropped
    assert stats.tokens_per_expert.tolist() == seen
    torch.testing.assert_close(y.reshape(18, 16), routed_with_gates(moe, tokens, gates), atol=1e-5, rtol=1e-5)


def test_backward_reaches_every_used_parameter():
    moe = make_moe(balance_coefs={"expert": 0.01})
    x = torch.randn(2, 8, 16, requires_grad=True)
    y, stats = moe(x)
    (y.square().mean() + stats.aux_loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert moe.router.gate.weight.grad.abs().sum() > 0
    used = stats.tokens_per_expert.nonzero().flatten().tolist()
    for e in used:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.experts[e].parameters())
    assert all(p.grad.abs().sum() > 0 for p in moe.shared_experts[0].parameters())
    assert moe.router.bias.grad is None


def test_matches_hugging_face_deepseek_v3_moe():
    # An ImportError here must FAIL the test: the HF check is part of the quality bar.
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = DeepseekV3Config(hidden_size=64, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                           n_shared_experts=1, moe_intermediate_size=32, intermediate_size=128,
                           routed_scaling_factor=2.5, norm_topk_prob=True)
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    ours = MoE(64, 32, n_routed_experts=8, n_shared_experts=1, top_k=2, score="sigmoid", route_scale=2.5,
               n_groups=4, topk_groups=2, use_bias=True)
    ours.router.bias.copy_(torch.randn(8) * 0.05)                        # nonzero: must steer selection
    hf = DeepseekV3MoE(cfg).eval()
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.gate.weight)
        hf.gate.e_score_correction_bias.copy_(ours.router.bias)
        for e, expert in enumerate(ours.experts):
            hf.experts.gate_up_proj[e].copy_(torch.cat([expert.w_gate.weight, expert.w_up.weight], 0))
            hf.experts.down_proj[e].copy_(expert.w_down.weight)
        shared = ours.shared_experts[0]
        hf.shared_experts.gate_proj.weight.copy_(shared.w_gate.weight)
        hf.shared_experts.up_proj.weight.copy_(shared.w_up.weight)
        hf.shared_experts.down_proj.weight.copy_(shared.w_down.weight)

    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        y, _ = ours(x)
        y_hf = hf(x)
        route = ours.router(x.reshape(24, 64))
        _, hf_weights, hf_ids = hf.gate(x)
    ours_sets = [set(row) for row in route.expert_ids.tolist()]
    assert ours_sets == [set(row) for row in hf_ids.tolist()]
    order, hf_order = route.expert_ids.argsort(-1), hf_ids.argsort(-1)
    torch.testing.assert_close(route.weights.gather(1, order), hf_weights.gather(1, hf_order), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y, y_hf, atol=1e-5, rtol=1e-5)
    # the bias mattered: without it some tokens pick different experts
    ours.router.bias.zero_()
    assert [set(row) for row in ours.router(x.reshape(24, 64)).expert_ids.tolist()] != ours_sets
