"""Launched by tests/test_expert_parallel_training.py under torchrun: expert-parallel training of TINY.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ep_train_worker.py OUT STEPS

In one launch, on fixed micro-batches (ListBatches: rank r takes r, r + W, ...; so W ranks see per step the
micro-batches one process with grad_accum W sees) and a validation split (evaluated on every rank):
    OUT/full    STEPS steps, saved at the end (latest.pt, best_model.pt)
    OUT/part    STEPS - 1 steps of the same run, saved; then resumed from its latest.pt for the last step
Each rank writes OUT/rank{r}.pt: the metrics rows, its local weights under their one-process names, and the
resumed run's final local weights. Also called in-process (world size 1, `run_single`) for the reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from training_helpers import ListBatches, fixed_batches, pattern_ids, tiny_cfg, train_cfg

from trainer import Trainer

BATCH, VAL_TOKENS, EVAL_BATCHES = 4, 4 * 65 * 3 + 1, 3     # 3 eval batches: uneven over 2 ranks


def setup(out_dir: Path, steps: int, world: int, rank: int, accum: int):
    batches = fixed_batches(steps * accum * world, BATCH, 64)
    cfg = train_cfg(out_dir, grad_accum=accum, max_steps=steps, eval_every=2, eval_batches=EVAL_BATCHES,
                    grad_clip=0.5)                 # a clip that bites: the global norm is used
    return cfg, ListBatches(batches, rank, world), pattern_ids(VAL_TOKENS, seed=1)


def local_weights(trainer: Trainer) -> dict:
    """This rank's weights under their one-process names."""
    to_global = trainer.experts.to_global if trainer.experts else {}
    return {to_global.get(k, k): v.clone() for k, v in trainer.raw_model.state_dict().items()}


def run_ep(out: Path, steps: int) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg, batches, val = setup(out / "full", steps, world, rank, 1)
    full = Trainer(tiny_cfg(), cfg, train_batches=batches, val_ids=val, expert_parallel=True)
    full.train()
    cfg, batches, val = setup(out / "part", steps, world, rank, 1)
    part = Trainer(tiny_cfg(), cfg, train_batches=batches, val_ids=val, expert_parallel=True)
    part.train(steps=steps - 1)
    cfg, batches, val = setup(out / "part", steps, world, rank, 1)
    resumed = Trainer(tiny_cfg(), cfg, train_batches=batches, val_ids=val, expert_parallel=True, resume=True)
    resumed.train()
    n_params = sum(p.numel() for p in full.raw_model.parameters())
    torch.save({"rows": full.metrics, "weights": local_weights(full), "resumed_rows": resumed.metrics,
                "resumed_weights": local_weights(resumed), "n_params": n_params}, out / f"rank{rank}.pt")
    full.close()


def run_single(out: Path, steps: int, world: int) -> Trainer:
    """The reference: one process, grad_accum = world, the same micro-batches."""
    cfg, batches, val = setup(out, steps, 1, 0, world)
    trainer = Trainer(tiny_cfg(), cfg, train_batches=batches, val_ids=val)
    trainer.train()
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_ep(Path(sys.argv[1]), int(sys.argv[2]))
