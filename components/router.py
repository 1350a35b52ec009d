"""The router (gate) of DeepSeekMoE: pick K of E experts per token and weight them.

Scores, selection and weights (V2 eqs 20-22, V3 eqs 12-16; docs/maths.md §2.3):
    s_t      = softmax(u_t^T e)  (V2)     |  sigmoid(u_t^T e)  (V3)           (N, E) affinities
    key_t    = s_t + b                     b: aux-loss-free bias, used ONLY to select (V3 eq 16)
    TopK_t   = topk(key_t, K)              optionally inside the best `topk_groups` of G groups
    g_{i,t}  = s_{i,t}           (softmax) |  s_{i,t} / sum_{j in TopK_t} s_{j,t}   (sigmoid, V3 eq 13)
    weights  = route_scale * g             gathered from the UNBIASED scores: b moves load, not outputs
Group-limited routing (V2 device-limited, V3 node-limited): experts are cut into G groups; a group
scores the max of its keys (softmax) or the sum of its two best keys (sigmoid, as V3 and HF do);
experts outside the kept groups get key -inf.

Aux-loss-free balancing (V3 Sec. 2.1.2, LFB Alg. 1), run by the trainer once per optimizer step:
    c_i = tokens sent to expert i in the step;   b_i <- b_i + gamma * sign(mean(c) - c_i)

Balance losses (docs/maths.md §2.5), each already multiplied by its coefficient in `losses`:
    'expert'   V2 eqs 23-25: f_i = E/(K N) * #{t: i in TopK_t} (constant), P_i = mean_t s'_{i,t},
               L = sum_i f_i P_i  (= 1 at perfectly uniform routing)
    'sequence' V3 eqs 17-20: the same per sequence of T tokens, averaged over the B sequences
    'z'        ST-MoE router z-loss: mean_t logsumexp(logits_t)^2
    'kl'       KL(p_bar || uniform) = log E - H(p_bar), p_bar = mean_t s'_t  (0 iff p_bar is uniform)
with s' = s normalised to sum 1 per token (a no-op for softmax). Two choices where the papers read otherwise:
  * f_i counts the experts actually routed to, TopK of s + b after group limiting; V3 eq 18 writes TopK of
    s alone. With the bias (or groups) on, ours penalises the selection that really happens, which is what
    the loss is there to balance; with balancing='aux_loss' and one group the two are the same.
  * 'expert' treats the whole batch (B*T tokens) as one sequence; V2 eqs 23-25 sum over the T tokens of a
    sequence. A batch-level f_i P_i is the usual reading for one device (Switch, GShard) and balances the
    batch as a whole; the per-sequence form is 'sequence' (same formula, mean over sequences).
They are computed whenever their
coefficient is > 0, in training AND eval mode, so validation can report them; the trainer decides
what to backpropagate.

Shapes: N tokens (B*T, in (b, t) order), E routed experts, K selected per token, D model width,
G expert groups, B sequences of T tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

BALANCE_LOSSES = ("expert", "sequence", "z", "kl")


class RouterOutput(NamedTuple):
    weights: torch.Tensor            # (N, K) fp32 mixing weights of the selected experts (unbiased scores)
    expert_ids: torch.Tensor         # (N, K) long
    aux_loss: torch.Tensor           # () sum of the enabled, coefficient-weighted balance losses
    tokens_per_expert: torch.Tensor  # (E,) long, selections per expert; sums to N*K
    losses: dict[str, torch.Tensor]  # name -> coef * loss, keys among BALANCE_LOSSES


def balance_f_times_p(counts: torch.Tensor, probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """sum_i f_i P_i over the last dim (V2 eq 23-25 / V3 eq 17-20), for one or a batch of sequences.

    counts (..., E): top-K selections per expert; probs (..., T, E): scores normalised per token.
    """
    n_experts, n_tokens = probs.shape[-1], probs.shape[-2]
    f = counts.float() * (n_experts / (top_k * n_tokens))             # (..., E) constant: no gradient
    P = probs.mean(dim=-2)                                             # (..., E) gradient flows here
    return (f * P).sum(-1)                                             # (...,)


class Router(nn.Module):
    """Top-K gate with optional group-limited routing, selection bias, noise and balance losses.

    Args:
        d_model: D. n_experts: E routed experts. top_k: K experts per token.
        score: 'softmax' (V2) or 'sigmoid' (V3; the K weights are renormalised to sum to 1).
        route_scale: multiplies the weights (DeepSeek `route_scale`, HF `routed_scaling_factor`).
        n_groups, topk_groups: group-limited routing, keep the best `topk_groups` of `n_groups`.
        noise_std: std of Gaussian noise added to the selection key in training mode (noisy top-k).
        use_bias: aux-loss-free balancing; `update_bias` moves the bias by `bias_update_rate` (gamma).
        balance_coefs: {'expert'|'sequence'|'z'|'kl': coefficient}; a loss is computed if coef > 0.
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, score: str = "sigmoid", route_scale: float = 1.0,
                 n_groups: int = 1, topk_groups: int = 1, noise_std: float = 0.0, use_bias: bool = False,
                 bias_update_rate: float = 1e-3, balance_coefs: dict[str, float] | None = None) -> None:
        super().__init__()
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score={score!r}: choose 'softmax' or 'sigmoid'")
        if n_experts % n_groups or not 1 <= topk_groups <= n_groups:
            raise ValueError(f"n_groups={n_groups} must divide n_experts={n_experts} and 1 <= topk_groups <= n_groups")
        if not 1 <= top_k <= topk_groups * (n_experts // n_groups):
            raise ValueError(f"top_k={top_k} must be in [1, experts left after group limiting]")
        unknown = set(balance_coefs or {}) - set(BALANCE_LOSSES)
        if unknown:
            raise ValueError(f"unknown balance losses {sorted(unknown)}; known: {BALANCE_LOSSES}")
        self.n_experts, self.top_k, self.score = n_experts, top_k, score
        self.route_scale, self.noise_std = route_scale, noise_std
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.use_bias, self.bias_update_rate = use_bias, bias_update_rate
        self.balance_coefs = {k: float(v) for k, v in (balance_coefs or {}).items() if v > 0}
        self.gate = nn.Linear(d_model, n_experts, bias=False)              # e_i: one centroid per expert
        # A buffer: saved in state_dict/checkpoints, moved by .to(device), never seen by the optimizer.
        self.register_buffer("bias", torch.zeros(n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, seq_len: int | None = None) -> RouterOutput:
        N, E, K = x.shape[0], self.n_experts, self.top_k
        # 1) logits and scores in fp32, even under bf16 autocast (routing is precision-sensitive)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())           # (N, E)
        scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()   # (N, E)

        # 2) the selection key: scores + bias (+ noise); it only decides WHICH experts, never HOW MUCH
        key = scores.detach()
        if self.use_bias:
            key = key + self.bias.float()                                    # (N, E)
        if self.training and self.noise_std > 0:
            key = key + torch.randn_like(key) * self.noise_std

        # 3) group-limited routing: keep the best `topk_groups` groups, mask the other experts to -inf
        if self.n_groups > 1:
            grouped = key.view(N, self.n_groups, E // self.n_groups)         # (N, G, E/G)
            if self.score == "softmax":
                group_score = grouped.amax(-1)                               # (N, G)
            else:
                group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # (N, G)
            kept = group_score.topk(self.topk_groups, dim=-1).indices        # (N, topk_groups)
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)  # (N, G)
            key = grouped.masked_fill(~group_mask.unsqueeze(-1), float("-inf")).flatten(1)  # (N, E)

        # 4) select K experts by key; weight them by the UNBIASED scores
        expert_ids = key.topk(K, dim=-1).indices                             # (N, K)
        weights = scores.gather(1, expert_ids)                               # (N, K)
        if self.score == "sigmoid":
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)      # V3 eq 13 (+1e-20 as HF)
        weights = weights * self.route_scale                                 # (N, K)

        # 5) load statistics: how many (token, slot) selections each expert received
        flat_ids = expert_ids.flatten()                                      # (N*K,)
        tokens_per_expert = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_ids, torch.ones_like(flat_ids))                          # (E,) sums to N*K

        # 6) balance losses, each multiplied by its coefficient
        losses = self._balance_losses(logits, scores, expert_ids, tokens_per_expert, seq_len)
        aux_loss = sum(losses.values()) if losses else logits.new_zeros(())
        return RouterOutput(weights, expert_ids, aux_loss, tokens_per_expert, losses)

    def _balance_losses(self, logits: torch.Tensor, scores: torch.Tensor, expert_ids: torch.Tensor,
                        tokens_per_expert: torch.Tensor, seq_len: int | None) -> dict[str, torch.Tensor]:
        if not self.balance_coefs:
            return {}
        N, E = scores.shape
        coefs, losses = self.balance_coefs, {}
        # s': per-token normalised scores (softmax already sums to 1; V3 eq 19 for sigmoid)
        probs = scores if self.score == "softmax" else scores / scores.sum(-1, keepdim=True)   # (N, E)
        if "expert" in coefs:        # V2 eqs 23-25, over all N tokens of the batch
            losses["expert"] = coefs["expert"] * balance_f_times_p(tokens_per_expert, probs, self.top_k)
        if "sequence" in coefs:      # V3 eqs 17-20, per sequence, then the mean over sequences
            T = seq_len or N
            if N % T:
                raise ValueError(f"seq_len={T} does not divide the {N} routed tokens")
            counts = torch.zeros(N // T, E, device=scores.device)            # (B, E)
            counts.scatter_add_(1, expert_ids.view(N // T, -1), torch.ones_like(expert_ids.view(N // T, -1),
                                                                               dtype=counts.dtype))
            per_seq = balance_f_times_p(counts, probs.view(N // T, T, E), self.top_k)   # (B,)
            losses["sequence"] = coefs["sequence"] * per_seq.mean()
        if "z" in coefs:             # ST-MoE: keeps router logits small
            losses["z"] = coefs["z"] * torch.logsumexp(logits, dim=-1).square().mean()
        if "kl" in coefs:            # KL(p_bar || U) = sum_i p_i log p_i + log E
            mean_prob = probs.mean(0)                                        # (E,)
            losses["kl"] = coefs["kl"] * (torch.special.xlogy(mean_prob, mean_prob).sum() + math.log(E))
        return losses

    def _apply(self, fn, recurse=True):
        """`.to()`, `.cuda()`, `.half()`, ...: the bias follows the module's device but stays fp32.

        Its sign updates are gamma ~ 1e-3 steps on values ~0.1; bf16 keeps 8 mantissa bits (steps of
        ~5e-4 there), so a cast would swallow most updates and round the values already learnt.
        """
        bias = self.bias
        super()._apply(fn, recurse)
        if self.bias.dtype != torch.float32:
            self.bias = bias.to(device=self.bias.device, dtype=torch.float32)   # from the fp32 original
        return self

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: torch.Tensor) -> None:
        """LFB Alg. 1: b_i += gamma * sign(mean(c) - c_i). Overloaded experts go down, underloaded up.

        Call once per optimizer step with the step's summed (all-reduced, across ranks) loads;
        a no-op when the router was built with use_bias=False.
        """
        if not self.use_bias:
            return
        load = tokens_per_expert.to(self.bias.device, torch.float32)        # (E,)
        self.bias += self.bias_update_rate * torch.sign(load.mean() - load)
