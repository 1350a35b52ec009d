"""Data parallelism vs expert parallelism on the same ranks: tokens/s, parameter memory, communication.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m benchmarks.expert_parallel [--json OUT]

Two Trainers in the same processes, built from the same seed: DP (DDP, every expert on every rank) and EP
(Trainer(expert_parallel=True): the routed experts split over the ranks, the rest DDP). Their steps are
timed round-robin (DP then EP in each round; a slow spell of a shared machine hits both), each step
between two barriers, on random token ids (speed does not depend on the text). Per rank:

    tokens/s          global tokens per step / median step time
    parameters        numbers this rank holds (x4 bytes fp32; AdamW adds 2 more copies, the gradient 1)
    all-reduce bytes  gradient bytes DDP reduces per step (a ring all-reduce sends ~2 (W-1)/W of them per rank)
    all-to-all bytes  activation bytes the EP layers sent to OTHER ranks in one step: the forward's dispatch
                      and combine (ExpertParallelMoE.last_exchange) and the same amounts again in the backward
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from common.cli import CommandLine
from constants import PRESETS
from trainer import TrainConfig, Trainer, train_step
from training.expert_parallel import exchange_bytes


def build(expert_parallel: bool, preset: str, batch_size: int, seed: int) -> Trainer:
    cfg = PRESETS[preset]
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 200_000).astype(np.uint16)
    train_cfg = TrainConfig(batch_size=batch_size, max_steps=1000, eval_every=0, save_every=0, sample_tokens=0,
                            device="cpu", quiet=True, seed=seed)
    return Trainer(replace(cfg), train_cfg, train_ids=ids, val_ids=None, expert_parallel=expert_parallel)


def timed_step(trainer: Trainer) -> float:
    dist.barrier()
    started = time.perf_counter()
    train_step(trainer.model, trainer.optimizer, trainer.batches, trainer.cfg, lr=1e-4, device=trainer.device,
               dist_info=trainer.dist, experts=trainer.experts)
    dist.barrier()
    return time.perf_counter() - started


def main() -> None:
    p = CommandLine(prog="benchmarks.expert_parallel", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs = {"dp": build(False, args.preset, args.batch_size, 0), "ep": build(True, args.preset, args.batch_size, 0)}
    times = {name: [] for name in runs}
    for round_ in range(args.warmup + args.rounds):
        for name, trainer in runs.items():
            seconds = timed_step(trainer)
            if round_ >= args.warmup:
                times[name].append(seconds)
    ep, dp, world = runs["ep"], runs["dp"], runs["ep"].dist.world_size
    a2a_forward = torch.tensor([exchange_bytes(ep.experts.layers)], dtype=torch.float64)
    dist.all_reduce(a2a_forward)                                      # summed over the ranks
    expert_ids = {id(p) for p in ep.experts.expert_params}
    result = {"preset": args.preset, "world": world, "threads_per_rank": torch.get_num_threads(),
              "tokens_per_step": dp.tokens_per_step, "load_avg": os.getloadavg()[0]}
    for name, trainer in runs.items():
        median = statistics.median(times[name])
        n_params = sum(p.numel() for p in trainer.raw_model.parameters())
        reduced = sum(p.numel() for p in trainer.raw_model.parameters() if id(p) not in expert_ids or name == "dp")
        result[name] = {"tokens_per_s": round(trainer.tokens_per_step / median), "median_step_s": round(median, 3),
                        "best_step_s": round(min(times[name]), 3), "params_per_rank": n_params,
                        "param_MiB_per_rank": round(4 * n_params / 2**20, 1),
                        "train_state_MiB_per_rank": round(16 * n_params / 2**20, 1),    # weights, grads, Adam m, v
                        "allreduce_grad_MiB": round(4 * reduced / 2**20, 1)}
    result["ep"]["all_to_all_MiB_per_rank_per_step"] = round(2 * float(a2a_forward) / world / 2**20, 2)  # fwd + bwd
    result["ep_vs_dp_tokens_per_s"] = round(result["ep"]["tokens_per_s"] / result["dp"]["tokens_per_s"], 3)
    if dp.dist.is_main:
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2)
    for trainer in runs.values():
        trainer.close()


if __name__ == "__main__":
    main()
