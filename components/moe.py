"""DeepSeekMoE layer: shared experts + top-K routed experts, dispatched by one sort.

V3 eq 12 (V2 eq 20), for each token u_t (the residual connection is added by the block):
    y_t = sum_{s=1}^{N_s} FFN_s^(shared)(u_t)  +  sum_{i in TopK_t} g_{i,t} FFN_i^(routed)(u_t)
Shared experts see every token and are unweighted ("shared-expert isolation", DeepSeekMoE); routed
experts see only the tokens the router sends them, weighted by the router's g (components/router.py).

Dispatch by sorting (instead of a boolean mask per expert):
    1) flatten the (token, slot) pairs and stably argsort them by expert id -> each expert's
       tokens become one contiguous slice, in token order;
    2) gather the tokens in that order once, run each expert once on its slice;
    3) multiply by the sorted gate weights and scatter-add back with ONE index_add_ by token index.
One host sync (the per-expert counts, needed to split); no per-expert masks, nonzero() or .item().

Capacity (optional, GShard/Switch style; DeepSeek's own layers are dropless): each expert takes at
most C = ceil(capacity_factor * N * K / E) slots; the stable sort keeps the first C in token order,
the rest are dropped: those (token, slot) pairs add nothing, the token keeps its shared experts and
the residual. Capacity is a training-time device (it bounds each expert's work per batch, GShard
§2.2): it applies in training mode only. In eval mode (validation, generation) every selection
runs, because dropping there makes a token's output depend on the other tokens in the batch: one
row on the others, and cached decoding (one token per forward) on whether the prompt was fed whole.
`MoEStats.tokens_per_expert` still reports the router's DEMAND (selections, before
dropping), which is what the aux-loss-free bias update must see; `dropped_tokens` counts the drops.

Shapes: B batch, T tokens per sequence, N = B*T tokens, E routed experts, K selected per token,
M <= N*K kept (token, slot) pairs, D model width, I expert hidden width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from components.expert import Expert
from components.router import Router


class MoEStats(NamedTuple):
    aux_loss: torch.Tensor           # () weighted sum of the enabled balance losses
    losses: dict[str, torch.Tensor]  # name -> coef * loss (see Router)
    tokens_per_expert: torch.Tensor  # (E,) long, router selections (demand, before capacity)
    dropped_tokens: torch.Tensor     # () long, (token, slot) pairs dropped by capacity (0 when dropless)


class MoE(nn.Module):
    """N_s shared experts + N_r routed experts of which the router picks K per token.

    Args:
        d_model: D. expert_hidden_dim: I, hidden width of every expert (routed and shared).
        n_routed_experts: E (N_r). n_shared_experts: N_s (0 allowed). top_k: K (K_r).
        capacity_factor: None = dropless; else slots per expert = ceil(cf * N * K / E), in training mode only.
        **router_kwargs: forwarded to `Router` (score, route_scale, n_groups, topk_groups, noise_std,
            use_bias, bias_update_rate, balance_coefs).
    """

    def __init__(self, d_model: int, expert_hidden_dim: int, n_routed_experts: int, n_shared_experts: int,
                 top_k: int, capacity_factor: float | None = None, **router_kwargs) -> None:
        super().__init__()
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor={capacity_factor!r} must be None (dropless) or > 0")
        self.capacity_factor = capacity_factor
        self.router = Router(d_model, n_routed_experts, top_k, **router_kwargs)
        self.experts = nn.ModuleList(Expert(d_model, expert_hidden_dim) for _ in range(n_routed_experts))
        # DeepSeek stores the N_s shared experts as ONE MLP of hidden width N_s * I: splitting its
        # hidden units into N_s blocks gives exactly the sum of N_s separate experts used here.
        self.shared_experts = nn.ModuleList(Expert(d_model, expert_hidden_dim) for _ in range(n_shared_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)                                          # (N, D)
        N, E = tokens.shape[0], len(self.experts)

        # 1) route: K experts and weights per token
        route = self.router(tokens, seq_len=T)
        K = route.expert_ids.shape[1]
        flat_ids = route.expert_ids.flatten()                                 # (N*K,) expert of each (token, slot)

        # 2) one stable sort groups the (token, slot) pairs by expert, in token order within an expert
        order = flat_ids.argsort(stable=True)                                 # (N*K,)
        counts = route.tokens_per_expert                                      # (E,)

        # 3) capacity: keep each expert's first C slots of the sorted order
        dropped = torch.zeros((), dtype=torch.long, device=x.device)
        if self.capacity_factor is not None and self.training:
            capacity = math.ceil(self.capacity_factor * N * K / E)
            starts = counts.cumsum(0) - counts                                # (E,) first sorted position per expert
            rank = torch.arange(N * K, device=x.device) - starts[flat_ids[order]]   # (N*K,) position inside its expert
            order = order[rank < capacity]                                    # (M,)
            kept = counts.clamp(max=capacity)                                 # (E,)
            dropped = (counts - kept).sum()
            counts = kept

        token_idx = order // K                                                # (M,) token of each sorted slot
        slot_weights = route.weights.flatten()[order].to(x.dtype)             # (M,) its gate weight g_{i,t}
        splits = counts.tolist()                                              # the ONE host sync

        # 4) gather tokens once (expert-contiguous), run each expert once on its slice
        expert_inputs = tokens.index_select(0, token_idx)                     # (M, D)
        chunks = expert_inputs.split(splits)                                  # E slices (n_e, D), some may be empty
        routed = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, chunks, strict=True)])  # (M, D)

        # 5) weight and scatter back: ONE index_add_ sums the K contributions of every token
        y = torch.zeros_like(tokens).index_add_(0, token_idx, routed * slot_weights.unsqueeze(-1))  # (N, D)

        # 6) shared experts: every token, unweighted
        for shared in self.shared_experts:
            y = y + shared(tokens)                                            # (N, D)

        stats = MoEStats(route.aux_loss, route.losses, route.tokens_per_expert, dropped)
        return y.view(B, T, D), stats                                         # (B, T, D)


def moe_dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The "obviously correct" MoE: every expert on every token, mixed by a dense (N, E) gate matrix.

    Same router, no capacity (dropless); E times the compute, for tests and notebooks only.
    """
    B, T, D = x.shape
    tokens = x.reshape(B * T, D)                                              # (N, D)
    route = moe.router(tokens, seq_len=T)
    gates = torch.zeros(tokens.shape[0], len(moe.experts), dtype=route.weights.dtype, device=x.device)
    gates.scatter_(1, route.expert_ids, route.weights)                        # (N, E) zero off the top-K
    all_outputs = torch.stack([expert(tokens) for expert in moe.experts], dim=1)   # (N, E, D)
    y = torch.einsum("ne,ned->nd", gates.to(x.dtype), all_outputs)           # (N, D)
    for shared in moe.shared_experts:
        y = y + shared(tokens)
    return y.view(B, T, D)
