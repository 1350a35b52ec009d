"""Hidden cases for the chapter 4 exercises (experts and the router).

4.1 `sigmoid_topk_weights(logits, bias, top_k)`: the V3 router (select by s + b, weight by s, renormalise).
4.2 `dense_moe_combine(weights, expert_ids, expert_outputs, capacity=None)`: the dense reference
    combine, with capacity dropping in token order.
4.3 `ffn_parameter_counts(cfg)`: total and active feed-forward parameters of a config, by formula.
4.4 written: why the bias may choose the experts but must not weight them.

Each check uses the real components (`Router`, `MoE`, `build_moe`) as the reference and raises
AssertionError with a hint that names the likely mistake. The components an exercise asks for are
switched off while the answer runs (exercises/guard.py): an answer that routes through `Router`, runs
`MoE` or builds modules to count them fails, saying so.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

import utils
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from components.expert import Expert
from components.moe import MoE, moe_dense_reference
from components.router import Router
from components.transformer_block import TransformerBlock, build_moe
from constants import DEFAULT, LARGE, SMALL, TINY
from exercises import Exercise, fingerprint


def _gate_matrix(weights: torch.Tensor, expert_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(N, K) weights and ids -> (N, E), zero off the selected experts (order of the K slots ignored)."""
    gates = torch.zeros(weights.shape[0], n_experts, dtype=torch.float32)
    return gates.scatter_(1, expert_ids.long(), weights.float())


def _as_pair(result, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(result, (tuple, list)) and len(result) == 2, \
        f"{name} must return a pair (weights, expert_ids), got {type(result).__name__}"
    weights, ids = result
    assert torch.is_tensor(weights) and torch.is_tensor(ids), f"{name} must return two tensors"
    return weights, ids


# --- 4.1 ------------------------------------------------------------------------------------
def _router_reference(logits: torch.Tensor, bias: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router with an identity gate, so that its logits are exactly `logits`."""
    n_experts = logits.shape[1]
    router = Router(n_experts, n_experts, top_k, score="sigmoid", use_bias=True)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(n_experts))
        router.bias.copy_(bias)
        out = router(logits)
    return out.weights, out.expert_ids


def _selected(ids: torch.Tensor) -> list[list[int]]:
    return ids.long().sort(dim=-1).values.tolist()


def check_4_1(student_fn) -> None:
    gen = torch.Generator().manual_seed(41)
    cases = [
        (torch.randn(5, 8, generator=gen), torch.zeros(8), 2),
        (torch.randn(7, 6, generator=gen), 0.3 * torch.randn(6, generator=gen), 3),
        # a large bias on expert 5: selected for every token, while its weight stays its own (small) score
        (torch.randn(6, 16, generator=gen) * 2, torch.zeros(16).index_fill_(0, torch.tensor([5]), 1.0), 4),
    ]
    for logits, bias, top_k in cases:
        n_tokens, n_experts = logits.shape
        ref_w, ref_ids = _router_reference(logits, bias, top_k)
        weights, ids = _as_pair(student_fn(logits.clone(), bias.clone(), top_k), "sigmoid_topk_weights")
        assert tuple(weights.shape) == (n_tokens, top_k) and tuple(ids.shape) == (n_tokens, top_k), \
            f"expected weights and expert_ids of shape (N, K) = {(n_tokens, top_k)}, got " \
            f"{tuple(weights.shape)} and {tuple(ids.shape)}"
        scores = logits.sigmoid()
        if _selected(ids) != _selected(ref_ids):
            if _selected(ids) == _selected(scores.topk(top_k, dim=-1).indices):
                raise AssertionError("wrong experts selected: choose the top-K of the BIASED key sigmoid(logits) + "
                                     "bias (V3 eq 16); you selected by the unbiased scores")
            if _selected(ids) == _selected((logits + bias).topk(top_k, dim=-1).indices):
                raise AssertionError("wrong experts selected: add the bias to the sigmoid SCORES, not to the logits")
            raise AssertionError(f"wrong experts selected for logits of shape {tuple(logits.shape)}, K={top_k}: "
                                 "expected the top-K of sigmoid(logits) + bias")
        got = _gate_matrix(weights.detach(), ids, n_experts)
        want = _gate_matrix(ref_w, ref_ids, n_experts)
        if torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            continue
        biased = (scores + bias).gather(1, ref_ids)
        if torch.allclose(got, _gate_matrix(biased / biased.sum(-1, keepdim=True), ref_ids, n_experts), atol=1e-5):
            raise AssertionError("right experts, wrong weights: the weights come from the UNBIASED scores "
                                 "sigmoid(logits); the bias only decides which experts are chosen")
        if torch.allclose(got, _gate_matrix(scores.gather(1, ref_ids), ref_ids, n_experts), atol=1e-5):
            raise AssertionError("right experts, but the weights do not sum to 1: renormalise the K selected "
                                 "scores by their sum (V3 eq 13)")
        raise AssertionError("right experts, wrong weights: expected s_i / sum_{j in TopK} s_j "
                             "with s = sigmoid(logits)")


# --- 4.2 ------------------------------------------------------------------------------------
def check_4_2(student_fn) -> None:
    # a hand case first: 3 tokens, 3 experts, K = 1, everybody picks expert 0, capacity 1 -> only token 0 survives
    outputs = torch.arange(1.0, 19.0).view(3, 3, 2)                     # (N=3, E=3, D=2)
    weights, ids = torch.full((3, 1), 0.5), torch.zeros(3, 1, dtype=torch.long)
    got = student_fn(weights, ids, outputs, 1)
    assert torch.is_tensor(got) and tuple(got.shape) == (3, 2), \
        f"dense_moe_combine must return an (N, D) tensor, got {getattr(got, 'shape', type(got))}"
    if fingerprint(got.detach()) != "b05502713ebf641e":          # the expected (N, D) output, hashed
        if torch.allclose(got.float(), 0.5 * outputs[:, 0]):
            raise AssertionError("hand case (all 3 tokens pick expert 0, capacity=1): tokens 1 and 2 must be "
                                 "dropped -- an expert keeps only its first `capacity` tokens in token order")
        raise AssertionError(f"hand case (all 3 tokens pick expert 0 with weight 0.5, capacity=1): got "
                             f"{got.tolist()}; expert 0 takes token 0 only, tokens 1 and 2 are dropped (zero output)")

    cases = [(None, 0.0), (None, 0.4), (1.0, 0.6), (0.5, 0.2), (1.25, 0.0)]
    for i, (capacity_factor, skew) in enumerate(cases):
        torch.manual_seed(420 + i)
        moe = MoE(16, 24, n_routed_experts=6, n_shared_experts=0, top_k=2, capacity_factor=capacity_factor,
                  use_bias=True)
        moe.router.bias[:2] = skew                                      # crowd experts 0 and 1
        x = torch.randn(1, 20, 16)
        tokens = x[0]
        with torch.no_grad():
            route = moe.router(tokens)
            expert_outputs = torch.stack([expert(tokens) for expert in moe.experts], dim=1)   # (N, E, D)
            want = moe(x)[0][0]                                         # sort dispatch, with capacity
            dropless = moe_dense_reference(moe, x)[0]
        n, k, e = 20, 2, 6
        capacity = None if capacity_factor is None else math.ceil(capacity_factor * n * k / e)
        got = student_fn(route.weights.clone(), route.expert_ids.clone(), expert_outputs.clone(), capacity)
        assert torch.is_tensor(got) and tuple(got.shape) == (n, 16), \
            f"dense_moe_combine must return an (N, D) = {(n, 16)} tensor, got {getattr(got, 'shape', type(got))}"
        if torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            continue
        unweighted = _gate_matrix(torch.ones_like(route.weights), route.expert_ids, e)
        if torch.allclose(got, torch.einsum("ne,ned->nd", unweighted, expert_outputs), atol=1e-5):
            raise AssertionError("you summed the selected experts' outputs without their gate weights g")
        if capacity is not None and torch.allclose(got, dropless, atol=1e-5, rtol=1e-5):
            raise AssertionError(f"capacity={capacity} was ignored: an expert keeps only its first `capacity` "
                                 "tokens (in token order); later (token, expert) pairs add nothing")
        raise AssertionError(f"output differs from MoE(capacity_factor={capacity_factor}) "
                             f"(capacity={capacity}); max abs error {(got - want).abs().max().item():.3g}")


# --- 4.3 ------------------------------------------------------------------------------------
def _ffn_reference(cfg: ModelConfig) -> tuple[int, int]:
    total = active = 0
    with torch.device("meta"):
        for layer in range(cfg.n_layers):
            if cfg.is_moe_layer(layer):
                moe = build_moe(cfg)
                per_expert = sum(p.numel() for p in moe.experts[0].parameters())
                layer_total = sum(p.numel() for p in moe.parameters())
                total += layer_total
                active += layer_total - (cfg.n_routed_experts - cfg.top_k) * per_expert
            else:
                dense = sum(p.numel() for p in Expert(cfg.d_model, cfg.resolved().dense_hidden_dim).parameters())
                total += dense
                active += dense
    return total, active


def _describe(cfg: ModelConfig) -> str:
    return (f"ffn={cfg.ffn!r}, n_layers={cfg.n_layers}, n_dense_layers={cfg.n_dense_layers}, d_model={cfg.d_model}, "
            f"E={cfg.n_routed_experts}, K={cfg.top_k}, N_s={cfg.n_shared_experts}, I={cfg.expert_hidden_dim}, "
            f"dense_hidden_dim={cfg.resolved().dense_hidden_dim}")


def check_4_3(student_fn) -> None:
    cases = [
        TINY, SMALL, DEFAULT, LARGE,
        replace(TINY, ffn="dense"),
        replace(TINY, n_dense_layers=0, n_shared_experts=0, top_k=1),
        replace(TINY, dense_hidden_dim=100, n_layers=3),
        replace(SMALL, n_routed_experts=64, top_k=6, n_shared_experts=2, expert_hidden_dim=176),   # V2-Lite-shaped
    ]
    for cfg in cases:
        want_total, want_active = _ffn_reference(cfg)
        result = student_fn(cfg)
        assert isinstance(result, (tuple, list)) and len(result) == 2, \
            f"ffn_parameter_counts must return (total, active), got {result!r}"
        total, active = (int(v) for v in result)
        if (total, active) == (want_total, want_active):
            continue
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
        router = n_moe * cfg.d_model * cfg.n_routed_experts
        hint = ""
        if total == want_total - router or active == want_active - router:
            hint = "did you forget the router? each MoE layer has a D x E gate matrix (every token uses it)"
        elif cfg.ffn == "dense" and total != want_total:
            hint = "ffn='dense' means every layer holds one dense SwiGLU FFN of width cfg.resolved().dense_hidden_dim"
        elif total != want_total and cfg.n_dense_layers and n_moe < cfg.n_layers:
            hint = ("the first n_dense_layers layers hold a dense SwiGLU FFN of width cfg.resolved().dense_hidden_dim, "
                    "the others an MoE")
        elif total == want_total and active == total:
            hint = "active counts only K of the E routed experts per MoE layer"
        elif total == want_total:
            hint = "active = dense FFNs + per MoE layer: router + N_s shared + K routed experts (3*D*I each)"
        raise AssertionError(f"for {_describe(cfg)} expected (total, active) = ({want_total}, {want_active}), "
                             f"got ({total}, {active})" + (f"; {hint}" if hint else ""))


# Counting by building (or by the library's own counter) is what 4.3 asks to replace with a formula.
_BUILDERS = (DeepSeekModel.__init__, TransformerBlock.__init__, MoE.__init__, Expert.__init__, Router.__init__,
             utils.parameter_count_from_config, utils.count_parameters, utils.count_active_parameters)

EXERCISES = {
    "4.1": Exercise("4.1", "sigmoid_topk_weights", 3, check_4_1, forbidden=(Router.forward,),
                    why="write the three steps (scores, biased selection, renormalised weights) yourself"),
    "4.2": Exercise("4.2", "dense_moe_combine", 4, check_4_2, forbidden=(MoE.forward, moe_dense_reference),
                    why="build the gate matrix and the capacity drops yourself"),
    "4.3": Exercise("4.3", "ffn_parameter_counts", 3, check_4_3, forbidden=_BUILDERS,
                    why="count from the config fields alone, as the exercise asks (no module, no library counter)"),
    "4.4": Exercise("4.4", "answer_4_4", 2),
}
