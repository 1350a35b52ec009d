"""MoE: sort dispatch == dense reference, capacity dropping, gradients, and Hugging Face DeepseekV3MoE."""

import math

import pytest
import torch

from components.moe import MoE, MoEStats, moe_dense_reference
from hugging_face.convert import moe_to_hf


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


# --- against Hugging Face transformers: the same weights must route and mix identically ---------

def hf_moe(version: int, n_shared: int, top_k: int, route_scale: float, n_groups: int = 1, topk_groups: int = 1,
           topk_method: str = "greedy"):
    """HF's DeepseekV3MoE (sigmoid) or DeepseekV2Moe (softmax) at width 64, 8 experts of width 32.

    An ImportError here must FAIL the test: the HF check is part of the quality bar."""
    from transformers import DeepseekV2Config, DeepseekV3Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    sizes = dict(hidden_size=64, n_routed_experts=8, num_experts_per_tok=top_k, n_group=n_groups,
                 topk_group=topk_groups, n_shared_experts=n_shared, moe_intermediate_size=32, intermediate_size=128,
                 routed_scaling_factor=route_scale)
    if version == 3:
        cfg = DeepseekV3Config(**sizes, norm_topk_prob=True)
    else:
        cfg = DeepseekV2Config(**sizes, topk_method=topk_method)
    cfg._experts_implementation = "eager"
    return (DeepseekV3MoE if version == 3 else DeepseekV2Moe)(cfg).eval()


def expert_sets(router, x) -> list[set]:
    return [set(row) for row in router(x).expert_ids.tolist()]


def assert_same_routing_and_output(ours: MoE, hf, x: torch.Tensor) -> list[set]:
    """Same experts per token, same weights (compared in expert order), same layer output."""
    tokens = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        y, _ = ours(x)
        y_hf = hf(x)
        route = ours.router(tokens)
        _, hf_weights, hf_ids = hf.gate(x)
    ours_sets = [set(row) for row in route.expert_ids.tolist()]
    assert ours_sets == [set(row) for row in hf_ids.tolist()]
    order, hf_order = route.expert_ids.argsort(-1), hf_ids.argsort(-1)
    torch.testing.assert_close(route.weights.gather(1, order), hf_weights.gather(1, hf_order), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y, y_hf, atol=1e-5, rtol=1e-5)
    return ours_sets


# (N_s, K, groups, kept groups): one shared expert as V3, none, two; K = E (every expert); group-limited routing
V3_CASES = [(1, 2, 4, 2), (0, 2, 1, 1), (2, 3, 4, 2), (1, 8, 1, 1), (2, 8, 4, 4)]


@pytest.mark.parametrize("n_shared, top_k, n_groups, topk_groups", V3_CASES)
def test_matches_hugging_face_deepseek_v3_moe(n_shared, top_k, n_groups, topk_groups):
    torch.manual_seed(0)
    ours = MoE(64, 32, n_routed_experts=8, n_shared_experts=n_shared, top_k=top_k, score="sigmoid", route_scale=2.5,
               n_groups=n_groups, topk_groups=topk_groups, use_bias=True)
    ours.router.bias.copy_(torch.randn(8) * 0.05)                        # nonzero: must steer selection
    hf = hf_moe(3, n_shared, top_k, 2.5, n_groups, topk_groups)
    hf.load_state_dict(moe_to_hf(ours.state_dict()), strict=True)
    x = torch.randn(2, 12, 64)
    ours_sets = assert_same_routing_and_output(ours, hf, x)
    tokens = x.reshape(24, 64)
    with torch.no_grad():
        if top_k < 8:       # the bias mattered: without it some tokens pick other experts
            bias = ours.router.bias.clone()
            ours.router.bias.zero_()
            assert expert_sets(ours.router, tokens) != ours_sets
            ours.router.bias.copy_(bias)
        if topk_groups < n_groups:      # and so did the group limit
            ours.router.n_groups = ours.router.topk_groups = 1
            assert expert_sets(ours.router, tokens) != ours_sets
        else:               # K = E: every token uses every expert
            assert all(len(row) == top_k for row in ours_sets)


@pytest.mark.parametrize("n_shared, top_k, topk_method", [(2, 2, "greedy"), (0, 3, "group_limited_greedy"),
                                                          (1, 8, "greedy")])
def test_softmax_routing_matches_hugging_face_deepseek_v2_moe(n_shared, top_k, topk_method):
    limited = topk_method == "group_limited_greedy"
    torch.manual_seed(1)
    ours = MoE(64, 32, n_routed_experts=8, n_shared_experts=n_shared, top_k=top_k, score="softmax", route_scale=1.5,
               n_groups=4 if limited else 1, topk_groups=2 if limited else 1)
    hf = hf_moe(2, n_shared, top_k, 1.5, 4 if limited else 1, 2 if limited else 1, topk_method)
    hf.load_state_dict(moe_to_hf(ours.state_dict(), selection_bias=False), strict=True)   # V2 has no bias
    x = torch.randn(2, 12, 64)
    ours_sets = assert_same_routing_and_output(ours, hf, x)
    if limited:             # the group limit mattered
        ours.router.n_groups = ours.router.topk_groups = 1
        with torch.no_grad():
            assert expert_sets(ours.router, x.reshape(24, 64)) != ours_sets
