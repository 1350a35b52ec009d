"""Training with the routed experts sharded over the ranks (expert parallelism), the rest data-parallel.

    torchrun --nproc_per_node N train.py --expert-parallel N ...      (Trainer(..., expert_parallel=True))

How it composes with data parallelism: the same N ranks do both. Every rank reads its own micro-batches
(as under DDP); attention, norms, embeddings, routers and shared experts are replicated and their
gradients averaged by DDP; the routed experts of every MoE layer are split E/N per rank
(components/expert_parallel.py), and DDP is told to ignore them. So the expert-parallel group is the
data-parallel group (no separate EP x DP grid yet: that is why --expert-parallel must equal the world size).

What training must add to the layer, all in `ExpertSharding`:
  * gradient scale: each rank's loss is the mean over its own tokens and DDP AVERAGES the replicated
    gradients (= the one-process mean over the global batch). An expert's gradient arrives through the
    combine/dispatch backward already SUMMED over all ranks' tokens, i.e. N times the one-process value:
    `scale_grads` divides it by N.
  * clipping with the global norm: the replicated gradients are equal on every rank after DDP, each
    expert's lives on one rank; ||g||^2 = ||replicated||^2 + all_reduce_sum(||local experts||^2).
  * checkpoints in the one format: a save gathers every rank's experts to rank 0 under their global names
    (`blocks.i.ffn.experts.{global index}...`) and the AdamW state with them, indexed as a one-process
    optimizer indexes it; a load takes each rank's share. So inference, the Hugging Face export and
    resume on any number of processes (with or without expert parallelism) read it unchanged.
  * fp16 loss scaling: one rank's expert gradients may overflow while the others' do not; the scaler
    must skip the step on every rank, so its "found inf" flags are all-reduced (`unscale_`).
Evaluation and sampling run on every rank (each forward is a collective); see trainer.py.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from components.deepseek_model import DeepSeekModel
from components.expert_parallel import ExpertParallelMoE
from components.moe import MoE


def shard_experts(model: nn.Module, group=None) -> dict[str, ExpertParallelMoE]:
    """Replace every `MoE` in `model` by an `ExpertParallelMoE` keeping this rank's experts, in place.
    Every rank must hold the same weights first (same seed). Returns {module name: layer}."""
    layers = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, MoE):
            parent_name, _, child = name.rpartition(".")
            layer = ExpertParallelMoE(module, group)
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
            layers[name] = layer
    if not layers:
        raise ValueError("expert parallelism needs a model with MoE layers (ffn='moe')")
    return layers


class ExpertSharding:
    """A model's MoE layers made expert-parallel over `group`, and what training needs to know about it.

    `optimizer_groups(model) -> ([names], [names])`: the parameter names of the optimizer's groups in its
    order (trainer.split_decay), to translate AdamW state between this rank's and a one-process indexing.
    """

    def __init__(self, model: DeepSeekModel, optimizer_groups, group=None) -> None:
        self.group = group or dist.group.WORLD
        self.world, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        self.layers = shard_experts(model, self.group)
        self.to_global: dict[str, str] = {}             # this rank's expert keys -> their one-process names
        for layer_name, layer in self.layers.items():
            for j, expert in enumerate(layer.experts):
                for key in expert.state_dict():
                    self.to_global[f"{layer_name}.experts.{j}.{key}"] = \
                        f"{layer_name}.experts.{layer.first_expert + j}.{key}"
        self.from_global = {g: local for local, g in self.to_global.items()}
        self.expert_params = [p for layer in self.layers.values() for p in layer.experts.parameters()]
        ids = {id(p) for p in self.expert_params}
        self.replicated_params = [p for p in model.parameters() if id(p) not in ids]
        # the one-process model's key and optimizer orders, from a copy that allocates nothing
        with torch.device("meta"):
            plain = DeepSeekModel(model.cfg)
        self.plain_keys = list(plain.state_dict())
        self.plain_groups, self.local_groups = optimizer_groups(plain), optimizer_groups(model)

    def is_expert_key(self, name: str) -> bool:
        """Whether a one-process name (`blocks.1.ffn.experts.3.w_up.weight`) belongs to a routed expert."""
        return any(name.startswith(f"{layer}.experts.") for layer in self.layers)

    def ddp_ignore(self, wrapped: nn.Module) -> list[str]:
        """Names, in the module DDP will wrap (maybe compiled), of the expert parameters it must not touch."""
        ids = {id(p) for p in self.expert_params}
        return [name for name, p in wrapped.named_parameters() if id(p) in ids]

    def describe(self) -> str:
        layer = next(iter(self.layers.values()))
        return (f"expert parallelism: {self.world} ranks, {layer.n_local} of {layer.n_experts} routed experts per "
                f"rank in each of {len(self.layers)} MoE layer(s); the rest data-parallel (DDP)")

    # --- gradients ----------------------------------------------------------------------------------
    def scale_grads(self) -> None:
        """Expert gradients are sums over all ranks' tokens: divide by the world size (see the docstring)."""
        for p in self.expert_params:
            if p.grad is not None:
                p.grad.div_(self.world)

    def clip(self, max_norm: float | None) -> torch.Tensor:
        """The global pre-clip gradient norm; scales every gradient by min(1, max_norm / (norm + 1e-6)) as
        `torch.nn.utils.clip_grad_norm_` does (None or 0: measure only). Collective."""
        def squares(params):
            grads = [p.grad for p in params if p.grad is not None]
            return (torch.stack(torch._foreach_norm(grads)).double().square().sum() if grads
                    else torch.zeros((), dtype=torch.float64))

        device = self.replicated_params[0].device
        expert_sq = squares(self.expert_params).to(device)
        dist.all_reduce(expert_sq, group=self.group)                     # each expert lives on one rank
        total = (squares(self.replicated_params).to(device) + expert_sq).sqrt().float()
        if max_norm and math.isfinite(max_norm):
            coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
            grads = [p.grad for p in self.replicated_params + self.expert_params if p.grad is not None]
            torch._foreach_mul_(grads, coef.to(grads[0].device))
        return total

    def unscale_(self, scaler, optimizer: torch.optim.Optimizer) -> None:
        """fp16: `scaler.unscale_(optimizer)`, then the overflow flags all-reduced (max) over the ranks, so
        that every rank skips an overflowed step and lowers the scale together (one rank's experts may
        overflow alone). The flags live in the scaler's per-optimizer state, as torch's ShardedGradScaler
        reduces them (that class itself refuses the fused AdamW: its flag has another shape)."""
        scaler.unscale_(optimizer)
        for found in scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values():
            dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.group)

    # --- checkpoints: gather to rank 0 in the one format, and take a rank's share back ---------------
    def _gather(self, part: dict) -> list[dict] | None:
        """Every rank's `part` on rank 0 (None elsewhere); collective."""
        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(part, parts, dst=dist.get_global_rank(self.group, 0), group=self.group)
        return parts

    def full_model_state(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The one-process state_dict (on rank 0; None elsewhere) from this rank's `local` state_dict."""
        mine = {self.to_global[k]: v.detach().cpu() for k, v in local.items() if k in self.to_global}
        parts = self._gather(mine)
        if parts is None:
            return None
        experts = {k: v for part in parts for k, v in part.items()}
        return {k: experts[k] if self.is_expert_key(k) else local[k] for k in self.plain_keys}

    def local_model_state(self, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's share of a one-process state_dict: the replicated entries and its experts (local names)."""
        local = {k: v for k, v in full.items() if not self.is_expert_key(k)}
        return local | {self.from_global[k]: v for k, v in full.items() if k in self.from_global}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The AdamW state_dict a one-process run would have (on rank 0; None elsewhere). Collective."""
        sd = optimizer.state_dict()
        local_names = [n for group in self.local_groups for n in group]
        by_name = {self.to_global.get(local_names[i], local_names[i]): s for i, s in sd["state"].items()}
        mine = {n: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                for n, s in by_name.items() if self.is_expert_key(n)}
        parts = self._gather(mine)
        if parts is None:
            return None
        merged = {n: s for n, s in by_name.items() if not self.is_expert_key(n)}
        merged |= {n: s for part in parts for n, s in part.items()}
        plain_names = [n for group in self.plain_groups for n in group]
        index = {n: i for i, n in enumerate(plain_names)}
        state = {index[n]: merged[n] for n in plain_names if n in merged}
        groups, start = [], 0
        for group, names in zip(sd["param_groups"], self.plain_groups, strict=True):
            groups.append(group | {"params": list(range(start, start + len(names)))})
            start += len(names)
        return {"state": state, "param_groups": groups}

    def local_optimizer_state(self, full: dict) -> dict:
        """This rank's share of a one-process AdamW state_dict, indexed as this rank's optimizer."""
        plain_names = [n for group in self.plain_groups for n in group]
        local_names = [n for group in self.local_groups for n in group]
        index = {n: i for i, n in enumerate(local_names)}
        state = {}
        for i, s in full["state"].items():
            name = plain_names[int(i)]
            local = self.from_global.get(name) if self.is_expert_key(name) else name
            if local is not None:
                state[index[local]] = s
        groups, start = [], 0
        for group, names in zip(full["param_groups"], self.local_groups, strict=True):
            groups.append(group | {"params": list(range(start, start + len(names)))})
            start += len(names)
        return {"state": state, "param_groups": groups}


def exchange_bytes(layers: dict[str, ExpertParallelMoE]) -> int:
    """Activation bytes this rank sent to other ranks in the last forward of every layer (dispatch + combine)."""
    return sum(2 * layer.last_exchange.bytes_sent for layer in layers.values() if layer.last_exchange is not None)
