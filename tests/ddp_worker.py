"""Launched by tests/test_ddp.py under torchrun: train TINY on fixed micro-batches, save what rank 0 saw.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT STEPS ACCUM
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT --seconds S

Rank r draws micro-batches r, r + W, r + 2W, ... of one fixed list (ListBatches), so W processes
with ACCUM micro-batches each see, per step, exactly the micro-batches one process with
W * ACCUM sees. The Trainer (process group from the torchrun environment, DDP, no_sync,
all-reduced router loads) is the production code path; only the batch source is swapped.
"""

from __future__ import annotations

import os
import sys

import torch
from training_helpers import ListBatches, fixed_batches, pattern_ids, tiny_cfg, train_cfg

from trainer import Trainer


def run(out: str, steps: int, accum: int) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    batches = fixed_batches(steps * accum * world, 4, 64)
    trainer = Trainer(tiny_cfg(), train_cfg(None, grad_accum=accum, max_steps=steps),
                      train_batches=ListBatches(batches, rank, world))
    grads = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append(
        {n: p.grad.clone() for n, p in trainer.raw_model.named_parameters() if p.grad is not None}))
    trainer.train()
    if rank == 0:
        torch.save({"rows": trainer.metrics, "grads": grads, "state": trainer.raw_model.state_dict(),
                    "world_size": trainer.dist.world_size}, out)
    trainer.close()


def run_timed(out: str, seconds: float) -> None:
    """A wall-clock budget with evaluations (rank 0 only, so the ranks' clocks differ): every rank saves
    its step count, cosine horizon and weights to OUT.rank<r>."""
    rank = int(os.environ.get("RANK", 0))
    ids = pattern_ids(6000)
    trainer = Trainer(tiny_cfg(), train_cfg(None, max_steps=None, time_budget_min=seconds / 60, eval_every=5),
                      train_ids=ids[:5000], val_ids=ids[5000:])
    trainer.train()
    torch.save({"steps": trainer.step, "horizon": trainer.schedule.horizon, "state": trainer.raw_model.state_dict()},
               f"{out}.rank{rank}")
    trainer.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2] == "--seconds":
        run_timed(sys.argv[1], float(sys.argv[3]))
    else:
        run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
