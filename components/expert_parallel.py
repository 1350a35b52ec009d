"""Expert parallelism: the routed experts of one MoE layer split over the ranks of a process group.

DeepSeek-V3 §3.2 trains with 64-way expert parallelism: each GPU holds a few of the 256 routed experts,
and every token travels to the ranks that hold its K experts and back (dispatch and combine, two
all-to-all exchanges per layer). The router and the shared experts are small and replicated.

One step on rank r of W ranks, each with its own N tokens, E routed experts, E_l = E / W of them here
(rank w holds experts w*E_l .. (w+1)*E_l - 1):
    1) route the local tokens (the same Router as the one-process `MoE`): (N, K) experts and weights;
    2) sort the (token, slot) pairs by expert (as `MoE` does); the pairs for rank w are then one slice;
    3) exchange the per-expert counts (an all-to-all of E integers), so each rank knows how many pairs it
       will receive from every rank for each of its experts;
    4) DISPATCH: one `all_to_all_single` with uneven split sizes sends every pair's token to the rank of
       its expert; a rank receives [from rank 0: its pairs for expert 0, 1, ...; from rank 1: ...];
    5) regroup what arrived by local expert (from rank 0, then rank 1, ...: the order of a global batch
       made of the ranks' batches one after the other), run each local expert once on its slice, and put
       the outputs back in arrival order;
    6) COMBINE: the reverse all-to-all returns every output to the rank of its token, in the order it left;
    7) weight by the gate weights and scatter-add per token, exactly as `MoE`; add the shared experts.
Both exchanges are differentiable (torch's functional autograd all-to-all): the backward of a dispatch
is a combine of the gradients, and the reverse. So each expert's gradient, on the rank that owns it,
sums the contributions of every rank's tokens, as the one-process layer's does over the whole batch.
The router and shared experts are replicated: their gradients on each rank cover that rank's tokens,
and an all-reduce (DDP, or `sum_replicated_grads` in tests) makes them the one-process gradients.

Capacity (optional) is applied where the pairs of an expert meet: on its rank, in arrival order, which
is the global batch's token order, with C computed from the global token count. So dropping is the same
as the one-process layer's on the concatenated batch.

Node-limited routing (V3 §2.1.2: each token goes to at most M nodes) becomes concrete when the router's
expert groups are the ranks (`n_groups = W`): `topk_groups = M` caps the ranks a token is sent to.
`ExpertParallelStats` measures what each rank sends and receives per forward.

Shapes: N local tokens, K selected per token, P = N*K (token, slot) pairs, R received pairs, W ranks,
E routed experts, E_l = E / W local experts, D model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd

from components.moe import MoE, MoEStats


class ExpertParallelStats(NamedTuple):
    """What one rank exchanged in one forward (dispatch; the combine sends the same amounts back)."""
    pairs_sent: torch.Tensor         # (W,) long, (token, slot) pairs this rank sent to each rank
    pairs_received: torch.Tensor     # (W,) long, pairs it received from each rank
    ranks_per_token: torch.Tensor    # () float, mean number of distinct ranks a token was sent to
    bytes_sent: int                  # activation bytes sent to OTHER ranks by the dispatch
    bytes_received: int              # activation bytes received from other ranks by the dispatch


def _all_to_all(x: torch.Tensor, recv_splits: list[int], send_splits: list[int], group) -> torch.Tensor:
    """Differentiable all-to-all with uneven splits: x's rows split by `send_splits` go to ranks 0..W-1."""
    out = all_to_all_single_autograd(x, recv_splits, send_splits, group)
    return out.wait() if hasattr(out, "wait") else out      # a functional collective may return a handle


class ExpertParallelMoE(nn.Module):
    """The routed experts of `moe` sharded over `group` (E_l = E / W each); router and shared replicated.

    Build it on every rank from the same one-process `MoE` (same weights everywhere, e.g. after the same
    seed): `ExpertParallelMoE(moe, group)` keeps this rank's experts and drops the others.
    """

    def __init__(self, moe: MoE, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group or dist.group.WORLD
        self.world, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        E = len(moe.experts)
        if E % self.world:
            raise ValueError(f"n_routed_experts={E} must be divisible by the {self.world} expert-parallel ranks")
        self.n_experts, self.n_local = E, E // self.world
        self.first_expert = self.rank * self.n_local
        self.capacity_factor = moe.capacity_factor
        self.router, self.shared_experts = moe.router, moe.shared_experts
        self.experts = nn.ModuleList(moe.experts[self.first_expert:self.first_expert + self.n_local])
        self.last_exchange: ExpertParallelStats | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)                                          # (N, D)
        N, W, E_l = tokens.shape[0], self.world, self.n_local

        # 1) route; 2) sort the pairs by expert: the pairs for rank w are the w-th slice
        route = self.router(tokens, seq_len=T)
        K = route.expert_ids.shape[1]
        order = route.expert_ids.flatten().argsort(stable=True)              # (P,)
        counts = route.tokens_per_expert                                      # (E,) pairs per expert
        send_splits = counts.view(W, E_l).sum(1)                              # (W,) pairs per destination

        # 3) exchange the counts: recv_counts[w, e] = pairs rank w sends to this rank's expert e
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)        # E_l counts from each rank
        recv_counts = recv_counts.view(W, E_l)                                # (W, E_l)
        recv_splits = recv_counts.sum(1)                                      # (W,)
        send_list, recv_list = send_splits.tolist(), recv_splits.tolist()     # host syncs: the split sizes

        # 4) dispatch: each pair's token to the rank of its expert
        sent = tokens.index_select(0, order // K)                             # (P, D) expert-contiguous
        received = _all_to_all(sent, recv_list, send_list, self.group)        # (R, D) source-major

        # 5) regroup by local expert (stable: within an expert, rank 0's pairs first, in their order),
        #    capacity on the global order, run each local expert once, restore the arrival order
        local_ids = torch.arange(E_l, device=x.device).repeat(W).repeat_interleave(recv_counts.flatten())  # (R,)
        by_expert = local_ids.argsort(stable=True)                            # (R,)
        per_expert = recv_counts.sum(0).tolist()                              # (E_l,) pairs per local expert
        capacity = self._capacity(N, K, x.device)                             # None: dropless
        chunks = received.index_select(0, by_expert).split(per_expert)
        outputs, dropped = [], 0
        for expert, chunk in zip(self.experts, chunks, strict=True):
            kept = chunk if capacity is None else chunk[:capacity]            # the first C in global order
            if kept.shape[0]:
                outputs.append(expert(kept))                                  # (n_e, D)
            if kept.shape[0] < chunk.shape[0]:                                # dropped pairs return zeros
                outputs.append(chunk.new_zeros(chunk.shape[0] - kept.shape[0], D))
                dropped += chunk.shape[0] - kept.shape[0]
        expert_out = torch.cat(outputs) if outputs else received              # (R, D) by_expert order
        arrival = torch.empty_like(expert_out).index_copy(0, by_expert, expert_out)   # (R, D) source-major

        # 6) combine: every output back to its token's rank, in the order the pairs left
        returned = _all_to_all(arrival, send_list, recv_list, self.group)     # (P, D)

        # 7) weight and scatter-add per token; shared experts on every token
        weights = route.weights.flatten()[order].to(x.dtype)                  # (P,)
        y = torch.zeros_like(tokens).index_add_(0, order // K, returned * weights.unsqueeze(-1))   # (N, D)
        for shared in self.shared_experts:
            y = y + shared(tokens)

        dropped = torch.tensor(dropped, device=x.device)                      # drops among the pairs received here
        self.last_exchange = self._exchange_stats(route.expert_ids, send_splits, recv_splits, D, x.element_size())
        return y.view(B, T, D), MoEStats(route.aux_loss, route.losses, route.tokens_per_expert, dropped)

    def _capacity(self, n_local_tokens: int, K: int, device: torch.device) -> int | None:
        """C = ceil(capacity_factor * N_global * K / E), as `MoE` computes it for the whole batch; None when
        dropless or in eval mode (capacity is a training-time device, see components/moe.py)."""
        if self.capacity_factor is None or not self.training:
            return None
        n_global = torch.tensor([n_local_tokens], device=device)
        dist.all_reduce(n_global, group=self.group)
        return math.ceil(self.capacity_factor * int(n_global) * K / self.n_experts)

    def _exchange_stats(self, expert_ids, send_splits, recv_splits, D: int, elem: int) -> ExpertParallelStats:
        owner = expert_ids // self.n_local                                    # (N, K) rank of each choice
        onehot = torch.zeros(owner.shape[0], self.world, dtype=torch.bool, device=owner.device)
        onehot.scatter_(1, owner, True)                                       # (N, W) ranks each token visits
        others = torch.ones(self.world, dtype=torch.bool)
        others[self.rank] = False
        return ExpertParallelStats(
            pairs_sent=send_splits.detach().cpu(), pairs_received=recv_splits.detach().cpu(),
            ranks_per_token=onehot.sum(1).float().mean().cpu(),
            bytes_sent=int(send_splits.cpu()[others].sum()) * D * elem,
            bytes_received=int(recv_splits.cpu()[others].sum()) * D * elem)


def sum_replicated_grads(module: ExpertParallelMoE) -> None:
    """All-reduce (sum) the gradients of the replicated parts (router, shared experts) over the group: after
    it, every rank holds the one-process layer's gradients for them (DDP does this in training)."""
    for part in (module.router, module.shared_experts):
        for param in part.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, group=module.group)
