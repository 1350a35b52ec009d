"""Data-parallel training in a few small helpers: joining the process group, placing the model, and the
reductions the trainer needs so that every rank takes the same decisions.

Under `torchrun --nproc_per_node N train.py ...` each process trains on its own random windows; DDP
averages the gradients in the last backward of each optimizer step. What the ranks must agree on
besides the gradients, the trainer reduces explicitly: the logged losses (mean), the routers' expert
loads (sum: one bias update from the whole global batch, DeepSeek-V3 §2.1.2), the cosine horizon of a
wall-clock budget (min) and whether the time is up (max). One process (no torchrun) is the same code
with every helper a no-op.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False      # this process called init_process_group (and should destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = DistInfo()      # the default of every helper: no torchrun, one process


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (no-op for one process).

    nccl when the processes train on CUDA, gloo on CPU. Idempotent: train.py calls it before
    preparing data (so rank 0 can tokenize first) and Trainer calls it again.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistInfo(rank, world_size, local_rank, False)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, True)


def close_distributed(info: DistInfo) -> None:
    """Leave the process group if this process joined it."""
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device, has_experts: bool, ignore: list[str] | tuple = ()) -> nn.Module:
    """DistributedDataParallel with the two settings an MoE model needs.

    find_unused_parameters: an expert that got no token this micro-batch has no gradient (DDP may
    warn once that it found none: that is luck, not a guarantee). No buffer sync per forward: the
    only changing buffers are router biases, and every rank applies the same all-reduced update, so
    they stay equal by construction. `ignore`: names of parameters DDP must neither broadcast at the
    start nor average (expert parallelism's sharded experts, training/expert_parallel.py).
    """
    ddp = nn.parallel.DistributedDataParallel
    if ignore:
        ddp._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    no_sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                  else "broadcast_buffers")                  # renamed in recent torch
    ids = [device.index] if device.type == "cuda" else None
    return ddp(model, device_ids=ids, find_unused_parameters=has_experts, **{no_sync_kw: False})


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values)
        values /= info.world_size
    return values


def sum_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values)
    return values


def agree(value: float, info: DistInfo, device: torch.device, op: str) -> float:
    """The min or max of a number over the ranks (every rank gets the same answer)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([float(value)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return tensor.item()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj` (a collective: every rank must call it), in rank order."""
    if not info.enabled:
        return [obj]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
