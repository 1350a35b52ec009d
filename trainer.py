"""One plain training loop for train.py, the notebooks and the ablations.

Per optimizer step (the unit that `max_steps`, the schedule and the logs count):
    for each of grad_accum micro-batches:    loss / grad_accum -> backward    (DDP: no_sync but the last)
    check loss and gradient norm are finite  (else stop before touching the weights)
    clip the gradient norm, AdamW step, lr schedule step
    loads = sum of each MoE layer's tokens_per_expert over the micro-batches (all-reduced under DDP)
    router.update_bias(loads)                 once per step, DeepSeek-V3 §2.1.2 (sign rule, rate gamma)

The learning rate warms up linearly, then follows a cosine down to min_lr_ratio * lr:
    lr(s) = lr * (s+1)/W                                         s < W
    lr(s) = lr * (m + (1-m) * (1 + cos(pi * (s-W)/(H-W))) / 2)   W <= s < H, then m * lr
with W warmup steps (at most H/10, fixed once H is first known), H the horizon (max_steps, or the
steps the epoch budget allows; with a wall-clock budget, fitted to the measured step rate after 10
steps and refitted after 20, 40, 80, ... as the rate settles: see `fit_time_horizon`) and
m = min_lr_ratio. AdamW decays only matrices: norms, biases and the embedding (also the tied
output head) are left alone, because pulling a gain or a token's vector toward zero is not
regularisation, it is damage.

Everything a resumed run needs (weights, optimizer, scheduler, RNGs, sampler position, router
biases) goes into `latest.pt`, so N steps + resume + N steps reproduces 2N uninterrupted steps.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import checkpoint as ckpt_io
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from constants import SEED
from data import TrainBatches, eval_batches
from utils import pick_device, set_seed

DTYPES = ("auto", "fp32", "bf16")
FIT_STEPS = 10          # a wall-clock budget fits the cosine horizon after 10 steps, refits after 20, 40, ...
TIME_SAFETY = 0.95      # fit the schedule into 95% of the remaining time (the end of a step overshoots)
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 40


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before the weights were touched."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model itself is a ModelConfig). Budgets: whichever of steps/epochs/time comes first."""
    batch_size: int = 16                 # sequences per micro-batch (per process under DDP)
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 1e-3                     # peak learning rate
    min_lr_ratio: float = 0.1            # cosine floor, as a fraction of lr
    warmup_steps: int = 100              # at most 10% of the horizon, so short runs still reach lr
    weight_decay: float = 0.1            # decoupled (AdamW), matrices only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0        # max global grad norm; None = no clipping (norm still logged)
    max_steps: int | None = 2000         # optimizer steps
    epochs: float | None = None          # passes over the training tokens
    time_budget_min: float | None = None  # wall-clock minutes for this train() call
    eval_every: int = 200                # steps between val evaluations; 0 = only at the end
    eval_batches: int | None = 20        # val batches per evaluation; None = the whole split
    save_every: int = 200                # steps between latest.pt saves; 0 = only at the end
    log_every: int = 10                  # steps between metrics rows
    sample_every: int = 0                # steps between sample generations; 0 = only at the end
    sample_prompts: tuple[str, ...] = ("The best way to learn programming is", "Startups are")
    sample_tokens: int = 40              # new tokens per sample; 0 = no samples
    out_dir: str | None = "checkpoints"  # None: keep everything in memory (notebooks)
    seed: int = SEED
    device: str = "auto"                 # 'auto' (cuda -> mps -> cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    compile: bool = False                # torch.compile the model (opt-in: slow to start)
    dtype: str = "auto"                  # 'auto': bf16 autocast on CUDA if supported, else fp32
    quiet: bool = False                  # no progress bar or log lines

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("batch_size", "grad_accum", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be a positive integer")
        for name in ("warmup_steps", "eval_every", "save_every", "sample_every", "sample_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                bad(name, "must be an integer >= 0")
        for name in ("max_steps", "eval_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                bad(name, "must be None or a positive integer")
        for name in ("epochs", "time_budget_min"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                bad(name, "must be None or > 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            bad("lr", "must be a finite number > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", "must be in [0, 1]")
        if not self.weight_decay >= 0:
            bad("weight_decay", "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "must be None (off) or > 0")
        if self.max_steps is None and self.epochs is None and self.time_budget_min is None:
            bad("max_steps", "set at least one budget: max_steps, epochs or time_budget_min")
        if self.dtype not in DTYPES:
            bad("dtype", f"choose one of {DTYPES}")
        if not all(isinstance(p, str) and p for p in self.sample_prompts):
            bad("sample_prompts", "must be non-empty strings")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        for name in ("betas", "sample_prompts"):     # JSON/checkpoints turn tuples into lists
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


# --- small pure helpers (tested one by one) ------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, horizon: int | None, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, cosine decay.

    The first step already gets lr/W (not 0: a zero-lr step would be wasted). With no horizon
    (a pure time budget, before the step rate is known) the lr holds at its peak after warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if horizon is None:
        return 1.0
    if step >= horizon:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, horizon - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_time_horizon(step: int, remaining_s: float, step_s: float, overhead_s_per_step: float) -> int:
    """The optimizer step at which a cosine should end so that it ends with the wall-clock budget.

    step: steps done so far; remaining_s: budget left; step_s: seconds per optimizer step, measured over
    the recent steps (not from the start: the first steps pay one-off costs, and a shared machine
    changes speed); overhead_s_per_step: evaluation, samples and saves, spread over the steps.
    """
    per_step = step_s + overhead_s_per_step
    return step + max(0, int(TIME_SAFETY * remaining_s / per_step))


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters AdamW decays (matrices) and those it must not (norms, biases, embeddings)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():        # a tied head appears once, as embed.weight
        if param.requires_grad:
            (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(name)
    return decay, no_decay


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, bool]:
    """AdamW over two groups (decay / no decay); the fused kernel wherever this torch has one.

    Fused AdamW updates every tensor in one kernel instead of a Python loop over parameters;
    on a 2-core CPU we measured its step 10x (TINY) to 20x (SMALL) cheaper than the default
    per-parameter loop, and 5-8x cheaper than foreach.
    """
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    groups = [{"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True), True
    except (RuntimeError, ValueError):           # a device/dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas), False


def keep_freed_memory_in_heap() -> bool:
    """Let glibc reuse freed large blocks instead of returning them to the OS (CPU training speed).

    glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps
    it on free. A SMALL step allocates several such blocks anew every step: the (B*T, V) logits,
    log-probabilities and their gradient (206 MB each at 1024 x 50257 fp32), the (V, D) gradients.
    Each first touch of a fresh page is a page fault plus zeroing by the kernel (measured: a fresh
    206 MB buffer costs 60-160 ms more to fill than a reused one). With a high mmap threshold and no
    trimming, freed blocks stay in the heap and are reused from the second step on (what jemalloc or
    tcmalloc, the allocators PyTorch's CPU tuning guide recommends, do anyway): SMALL trains ~25%
    faster on a 2-core CPU (benchmarks/train.py). The cost: the process keeps its peak memory until
    it exits. Process-wide; returns False where this is not glibc (macOS, Windows, musl): a no-op.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                # <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def load_stats(counts: torch.Tensor) -> dict:
    """Expert-load summary of one MoE layer from its per-expert token counts c_i (E,)."""
    counts = counts.float()
    mean = counts.mean().item()
    return {"max_ratio": counts.max().item() / mean if mean > 0 else 0.0,   # 1.0 = perfectly balanced
            "dead": int((counts == 0).sum().item())}


# --- distributed -------------------------------------------------------------------------------

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


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if not info.enabled:
        return pick_device(cfg.device)
    requested = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    requested = "cpu" if requested == "auto" else requested
    device = pick_device(requested)
    if device.type == "mps":
        raise ValueError("--device mps: DDP runs on CUDA (nccl) or CPU (gloo); use --device cpu")
    return torch.device("cuda", info.local_rank) if device.type == "cuda" else device


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """Train a DeepSeekModel; `train()` returns a summary dict, `metrics` holds the logged rows.

    Args:
        model_cfg: the architecture (a preset or a `replace`d variant).
        train_cfg: optimisation, budgets, logging and output settings.
        data: `data.prepare_data(...)` output; or pass `train_ids=` / `val_ids=` (1-D token arrays).
        train_batches: any object with TrainBatches' interface (`next()`, `state_dict()`,
            `load_state_dict()`, `epoch`) to replace the random sampler (tests use it to feed
            chosen micro-batches); default `TrainBatches(train_ids, batch_size, T, seed + rank)`.
        resume: True (out_dir/latest.pt) or a checkpoint path to continue from.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig | None = None, data=None, *,
                 train_ids=None, val_ids=None, train_batches=None, resume: bool | str | os.PathLike = False):
        cfg = self.cfg = train_cfg or TrainConfig()
        self.model_cfg = model_cfg
        # 1) processes and device
        self.dist = init_distributed(cfg.device)
        self.device = _resolve_device(cfg, self.dist)
        if self.device.type == "cpu":
            keep_freed_memory_in_heap()
        use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda"
                                           and torch.cuda.is_bf16_supported())
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        # 2) data: each rank draws its own random windows (seed + rank)
        self.train_ids = data.train_ids if data is not None else train_ids
        self.val_ids = data.val_ids if data is not None else val_ids
        if self.train_ids is None and train_batches is None:
            raise ValueError("Trainer needs data=prepare_data(...), train_ids=..., or train_batches=...")
        if self.val_ids is not None and len(self.val_ids) < model_cfg.context_length + 1:
            raise ValueError(f"val_ids has {len(self.val_ids)} tokens, fewer than one window of context_length+1 = "
                             f"{model_cfg.context_length + 1}; pass more validation tokens or val_ids=None")
        self.batches = train_batches if train_batches is not None else TrainBatches(
            self.train_ids, cfg.batch_size, model_cfg.context_length, seed=cfg.seed + self.dist.rank)
        # 3) model: the same init on every rank, then per-rank randomness (dropout, router noise)
        set_seed(cfg.seed)
        self.raw_model = DeepSeekModel(model_cfg).to(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        if self.dist.enabled:
            # find_unused_parameters: an expert that got no token this micro-batch has no gradient
            # (DDP may warn once that it found none: that is luck, not a guarantee).
            # No buffer sync per forward: the only changing buffers are router biases, and every
            # rank applies the same all-reduced update, so they stay equal by construction.
            ddp = nn.parallel.DistributedDataParallel
            no_sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                          else "broadcast_buffers")                  # renamed in recent torch
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = ddp(self.model, device_ids=ids, find_unused_parameters=model_cfg.ffn == "moe",
                             **{no_sync_kw: False})
        # 4) optimizer and schedule (the lambda reads self.horizon, so a time budget can set it later)
        self.optimizer, self.fused = make_optimizer(self.raw_model, cfg)
        self.tokens_per_step = cfg.batch_size * model_cfg.context_length * cfg.grad_accum * self.dist.world_size
        self.horizon = self._budget_horizon()
        self._warmup: int | None = None                  # fixed at the first horizon (see warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.lr_factor(s))
        # 5) bookkeeping
        self.step = 0
        self.best_val_loss = math.inf
        self.last_val_loss: float | None = None
        self.metrics: list[dict] = []
        self.samples: list[dict] = []
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.metrics_path = self.out_dir / "metrics.jsonl" if self.out_dir else None
        self._metrics_file = self._bar = self._last_saved = None
        if resume:
            if resume is True and self.out_dir is None:
                raise ValueError("resume=True needs TrainConfig.out_dir (where latest.pt is); or pass a path")
            self._resume(self.out_dir / "latest.pt" if resume is True else Path(resume))
        elif self.metrics_path and self.dist.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()                # a fresh run starts a fresh log
        if self.out_dir and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale_temp_files(self.out_dir)

    # --- budgets --------------------------------------------------------------------------------
    def _budget_horizon(self) -> int | None:
        """Steps the step/epoch budgets allow (the cosine horizon); None if only time limits the run."""
        candidates = [self.cfg.max_steps] if self.cfg.max_steps else []
        if self.cfg.epochs and self.train_ids is not None:
            candidates.append(math.ceil(self.cfg.epochs * len(self.train_ids) / self.tokens_per_step))
        return min(candidates) if candidates else None

    @property
    def epoch(self) -> float:
        """Passes over the training tokens, all ranks together."""
        return float(getattr(self.batches, "epoch", 0.0)) * self.dist.world_size

    def _stop_reason(self, target: int | None, time_up: bool) -> str | None:
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.epochs is not None and self.epoch >= self.cfg.epochs:
            return "epochs"
        if time_up:
            return "time_budget"
        if target is not None and self.step >= target:
            return "steps"
        return None

    def _fit_horizon_to_time(self, window_steps: int, window_s: float, elapsed: float, train_time: float,
                             steps_done: int, evaluated: bool) -> None:
        """End the cosine where the wall-clock budget will end, from the step rate of the last window.

        Called after FIT_STEPS steps of this train() call, then after 2x, 4x, ... as many: each fit uses
        the steps since the previous one, so one slow start (page faults, a busy machine) does not fix
        the schedule for the whole run. Under DDP the ranks take the smallest horizon, so that all of
        them follow the same learning rate.
        """
        cfg = self.cfg
        step_s = window_s / window_steps
        if evaluated:               # measured: everything outside the training steps, per step so far
            overhead = (elapsed - train_time) / steps_done
        else:                       # estimated: an eval batch costs ~1/3 of a training micro-step
            overhead = 0.0
            if cfg.eval_every and self.val_ids is not None:
                n_eval = cfg.eval_batches or len(self.val_ids) // (cfg.batch_size * self.model_cfg.context_length) + 1
                overhead = step_s * n_eval / (3 * cfg.grad_accum * cfg.eval_every)
        fits = fit_time_horizon(self.step, cfg.time_budget_min * 60 - elapsed, step_s, overhead)
        if self.dist.enabled:
            agreed = torch.tensor([fits], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            fits = int(agreed.item())
        budget = self._budget_horizon()                           # a step/epoch budget still caps it
        previous, self.horizon = self.horizon, min(fits, budget) if budget else fits
        if previous is None or abs(self.horizon - previous) > 0.02 * previous:
            self._say(f"time budget: ~{fits} steps fit in {cfg.time_budget_min:g} min "
                      f"({step_s:.2f} s/step); cosine schedule ends at step {self.horizon}")

    # --- one optimizer step -------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _optimizer_step(self, time_up: bool) -> dict:
        """grad_accum micro-batches, checks, clip, AdamW, schedule, router-bias update -> log values."""
        cfg, accum = self.cfg, self.cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        loads, dropped = None, None
        for micro in range(accum):
            x, y = self.batches.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # DDP all-reduces gradients on every backward unless told otherwise: only the last one
            sync = micro == accum - 1 or not self.dist.enabled
            with nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    _, loss, aux = self.model(x, y)
                (loss / accum).backward()
            # 1) sums of the scalars we log, and of the routers' per-expert loads
            values = {"loss": loss.detach(), "ce": aux["ce"], "balance_loss": aux["balance_loss"]}
            values |= {f"balance_{k}": v for k, v in aux["balance_losses"].items()}
            if aux.get("mtp_loss") is not None:
                values["mtp_loss"] = aux["mtp_loss"]
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v.float() / accum
            counts = [c.detach() for c in aux["tokens_per_expert"]]
            drops = [d.detach() for d in aux["dropped_tokens"]]
            loads = counts if loads is None else [a + c for a, c in zip(loads, counts, strict=True)]
            dropped = drops if dropped is None else [a + d for a, d in zip(dropped, drops, strict=True)]
        # 2) pre-clip gradient norm (clipping with an infinite threshold only measures)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
        # 3) one reduction shares everything the ranks must agree on: losses, "not finite", "time up"
        names = sorted(sums)
        bad = (~torch.isfinite(sums["loss"])).float() + (~torch.isfinite(grad_norm)).float()
        vector = torch.stack([sums[k] for k in names] + [bad, torch.tensor(float(time_up), device=bad.device)])
        if self.dist.enabled:
            dist.all_reduce(vector)
            vector[:len(names)] /= self.dist.world_size
        host = vector.tolist()                                        # the step's one host sync
        logged, n_bad, n_time = dict(zip(names, host[:len(names)], strict=True)), host[-2], host[-1]
        if n_bad:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite loss/gradient at step {self.step + 1} (loss={logged['loss']}, grad_norm="
                f"{grad_norm.item()}): stopped before updating the weights; last good checkpoint: "
                f"{self._last_saved or 'none yet'}; lower --lr, raise warmup, or check the data")
        # 4) the update, then the schedule for the next step
        logged["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        # 5) aux-loss-free balancing: one bias update per step from the whole step's loads, summed
        #    over micro-batches and (under DDP) over ranks, so every rank applies the same update
        logged |= {"expert_counts": [], "load_max_ratio": [], "dead_experts": [], "dropped_tokens": []}
        if loads:
            stats = torch.cat([torch.stack(loads), torch.stack(dropped)[:, None]], dim=1)   # (layers, E+1)
            if self.dist.enabled:
                dist.all_reduce(stats)
            load_matrix = stats[:, :-1]                                                     # (layers, E)
            routers = self.raw_model.routers()
            if len(routers) != len(load_matrix):
                raise RuntimeError(f"{len(routers)} routers but {len(load_matrix)} load vectors from the forward")
            for router, load in zip(routers, load_matrix, strict=True):
                router.update_bias(load)
            per_layer = [load_stats(load) for load in load_matrix]
            logged["expert_counts"] = load_matrix.tolist()
            logged["load_max_ratio"] = [round(s["max_ratio"], 4) for s in per_layer]
            logged["dead_experts"] = [s["dead"] for s in per_layer]
            logged["dropped_tokens"] = stats[:, -1].tolist()
        logged["grad_norm"] = grad_norm.item()
        logged["time_up"] = bool(n_time)
        return logged

    # --- the loop -------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> dict:
        """Train until a budget runs out (or for `steps` more steps); returns a summary dict.

        Summary: steps, tokens, epoch, final_val_loss, best_val_loss, tokens_per_s, elapsed_s,
        stopped_because ('max_steps' | 'epochs' | 'time_budget' | 'steps'), metrics_path, out_dir, samples.
        Each row of `self.metrics` (and of out_dir/metrics.jsonl) has a `kind`:
          train: step, epoch, tokens, loss, ce, balance_loss, balance_<name> per active balance loss,
                 mtp_loss (with MTP), lr, grad_norm (before clipping), tokens_per_s, elapsed_s, and per
                 MoE layer: expert_counts, load_max_ratio (max_i c_i / mean c; 1 = balanced),
                 dead_experts (#c_i == 0), dropped_tokens (capacity overflow)
          eval:  step, epoch, val_loss, val_ppl, best_val_loss
          sample: step, samples [{prompt, text}]
        Raises NonFiniteLossError (after leaving the last good checkpoint untouched).
        """
        from tqdm import tqdm  # console bar, shown on a TTY only (tqdm.auto warns in notebooks)

        cfg, is_main = self.cfg, self.dist.is_main
        target = self.step + steps if steps is not None else None
        started, train_time, steps_done, time_up = time.perf_counter(), 0.0, 0, False
        fit_at, window = FIT_STEPS, (0, 0.0)              # next horizon fit; (steps, train time) at the last
        last_log_time, last_log_tokens = 0.0, 0
        self._metrics_file = open(self.metrics_path, "a") if self.metrics_path and is_main else None
        show_bar = is_main and not cfg.quiet and sys.stderr.isatty()
        bar = tqdm(total=self.horizon or cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not show_bar, dynamic_ncols=True)
        self._bar = bar
        evaluated_at = saved_at = None
        try:
            while (reason := self._stop_reason(target, time_up)) is None:
                self.raw_model.train()
                step_started = time.perf_counter()
                logged = self._optimizer_step(time_up=cfg.time_budget_min is not None and (
                    time.perf_counter() - started) >= cfg.time_budget_min * 60)
                self.step += 1
                steps_done += 1
                train_time += time.perf_counter() - step_started
                time_up = logged.pop("time_up")
                bar.update(1)
                if steps_done == 1:
                    window = (1, train_time)              # the first step pays one-off costs: not timed
                if cfg.time_budget_min and steps_done == fit_at and not time_up:
                    self._fit_horizon_to_time(steps_done - window[0], train_time - window[1],
                                              time.perf_counter() - started, train_time, steps_done,
                                              evaluated=evaluated_at is not None)
                    window, fit_at = (steps_done, train_time), 2 * fit_at
                    bar.total = self.horizon
                # metrics row
                if self.step % cfg.log_every == 0 or steps_done == 1:
                    tokens = steps_done * self.tokens_per_step
                    row = {"kind": "train", "step": self.step, "epoch": round(self.epoch, 5),
                           "tokens": self.step * self.tokens_per_step,
                           **logged,
                           "tokens_per_s": (tokens - last_log_tokens) / max(train_time - last_log_time, 1e-9),
                           "elapsed_s": round(time.perf_counter() - started, 3)}
                    last_log_time, last_log_tokens = train_time, tokens
                    self._record(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}")
                    self._say(self._format_train(row), bar_only=True)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate_and_keep_best()
                    evaluated_at = self.step
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_latest()
                    saved_at = self.step
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.sample()
            if steps_done:
                self._finish(evaluated_at, saved_at)
        finally:
            bar.close()
            if self._metrics_file:
                self._metrics_file.close()
                self._metrics_file = None
        summary = {
            "steps": self.step, "tokens": self.step * self.tokens_per_step, "epoch": self.epoch,
            "final_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "tokens_per_s": steps_done * self.tokens_per_step / max(train_time, 1e-9),
            "elapsed_s": time.perf_counter() - started, "stopped_because": reason,
            "metrics_path": str(self.metrics_path) if self.metrics_path else None,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "samples": self.samples[-1]["samples"] if self.samples else [],
        }
        return summary

    def _finish(self, evaluated_at: int | None, saved_at: int | None) -> None:
        """End of a train() call: final evaluation, latest.pt, and the closing samples."""
        if evaluated_at != self.step:
            self._evaluate_and_keep_best()
        if saved_at != self.step:
            self.save_latest()
        if self.val_ids is None and self.out_dir and self.dist.is_main:
            self._save_best(None)              # no val split: the final weights are the "best" we know
        if not self.cfg.sample_every or self.step % self.cfg.sample_every:
            self.sample()

    @property
    def warmup_steps(self) -> int:
        """cfg.warmup_steps, capped at 10% of the horizon (20 steps of a 100-step warmup teach nothing).

        Fixed the first time a horizon is known: a refitted (longer) horizon must not send the lr back
        into its warmup ramp.
        """
        if self.horizon is None:
            return self.cfg.warmup_steps
        if self._warmup is None:
            self._warmup = min(self.cfg.warmup_steps, self.horizon // 10)
        return self._warmup

    def lr_factor(self, step: int) -> float:
        """The schedule LambdaLR follows; it reads the horizon live, so a time budget can set it later."""
        return lr_factor(step, self.warmup_steps, self.horizon, self.cfg.min_lr_ratio)

    def _lr_of(self, step: int) -> float:
        """The lr that optimizer step `step` (0-based) uses, computed the way LambdaLR does."""
        return self.cfg.lr * self.lr_factor(step)

    # --- evaluation, samples, checkpoints -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Mean cross-entropy over the first eval_batches val batches (the same tokens every time)."""
        if self.val_ids is None:
            return None
        model, was_training = self.raw_model, self.raw_model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for x, y in eval_batches(self.val_ids, self.cfg.batch_size, self.model_cfg.context_length,
                                     max_batches=self.cfg.eval_batches):
                with self._autocast():
                    _, _, aux = model(x.to(self.device), y.to(self.device))
                total += aux["ce"].item() * y.numel()
                count += y.numel()
        finally:
            model.train(was_training)
        val_loss = total / count
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    def _evaluate_and_keep_best(self) -> None:
        if not self.dist.is_main or self.val_ids is None:
            return                              # only rank 0 evaluates; others go on to the next step
        result = self.evaluate()
        self.last_val_loss = result["val_loss"]
        improved = result["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = result["val_loss"]
            self._save_best(result["val_loss"])
        self._record({"kind": "eval", "step": self.step, "epoch": round(self.epoch, 5), **result,
                      "best_val_loss": self.best_val_loss})
        self._say(f"step {self.step} | val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.1f}"
                  f"{' (best)' if improved else ''}")

    def sample(self) -> list[dict]:
        """Continue each fixed prompt; any failure becomes a warning so training is never lost to it."""
        if not self.dist.is_main or not self.cfg.sample_prompts or not self.cfg.sample_tokens:
            return []
        results = []
        # a private RNG stream: sampling must not shift the training RNG (resume exactness)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                from utils import get_tokenizer

                tokenizer = get_tokenizer()
            except Exception as err:
                self._say(f"warning: samples skipped, tokenizer unavailable: {err}")
                return []
            for prompt in self.cfg.sample_prompts:
                try:
                    ids = tokenizer.encode_ordinary(prompt)
                    idx = torch.tensor([ids], dtype=torch.long, device=self.device)
                    out = self.raw_model.generate(idx, self.cfg.sample_tokens, temperature=SAMPLE_TEMPERATURE,
                                                  top_k=SAMPLE_TOP_K, seed=self.cfg.seed)
                    kept = min(len(ids), self.model_cfg.context_length)
                    text = tokenizer.decode(out[0, kept:].tolist())
                    results.append({"prompt": prompt, "text": text})
                except Exception as err:
                    self._say(f"warning: sample for {prompt!r} failed ({type(err).__name__}: {err})")
                    results.append({"prompt": prompt, "text": None, "error": str(err)})
        self.samples.append({"step": self.step, "samples": results})
        self._record({"kind": "sample", "step": self.step, "samples": results})
        for r in results:
            if r["text"] is not None:
                self._say(f"sample @ step {self.step}: " + f"{r['prompt']}{r['text']}".replace("\n", " / ")[:200])
        return results

    def _trainer_state(self) -> dict:
        return {"best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "world_size": self.dist.world_size, "tokens": self.step * self.tokens_per_step}

    def save_latest(self) -> Path | None:
        """Write out_dir/latest.pt (resumable). Collective under DDP: every rank must call it."""
        rng, data_state = ckpt_io.capture_rng(), self.batches.state_dict()
        if self.dist.enabled:                   # each rank's RNG and sampler go into rank 0's file
            gathered: list = [None] * self.dist.world_size
            dist.all_gather_object(gathered, (rng, data_state))
            rngs, datas = [g[0] for g in gathered], [g[1] for g in gathered]
        else:
            rngs, datas = [rng], [data_state]
        if not self.out_dir or not self.dist.is_main:
            return None
        ckpt = ckpt_io.make_checkpoint(self.raw_model, step=self.step, kind="latest",
                                       train_config=self.cfg.to_dict(), optimizer=self.optimizer,
                                       scheduler=self.scheduler, rng=rngs, data=datas, trainer=self._trainer_state())
        path = ckpt_io.atomic_save(ckpt, self.out_dir / "latest.pt")
        self._last_saved = f"{path} (step {self.step})"
        return path

    def _save_best(self, val_loss: float | None) -> None:
        if not self.out_dir:
            return
        state = self._trainer_state() | {"val_loss": val_loss}
        ckpt = ckpt_io.make_checkpoint(self.raw_model, step=self.step, kind="best",
                                       train_config=self.cfg.to_dict(), trainer=state)
        ckpt_io.atomic_save(ckpt, self.out_dir / "best_model.pt")

    def _resume(self, path: Path) -> None:
        """Restore everything latest.pt holds; the current TrainConfig's lr and budgets win."""
        ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")   # RNG states must stay CPU tensors
        if ckpt.get("kind") != "latest" or "optimizer" not in ckpt:
            raise ckpt_io.CheckpointError(f"{path} is a '{ckpt.get('kind')}' checkpoint without optimizer state; "
                                          "resume from latest.pt")
        ckpt_io.check_tokenizer(ckpt, path)
        ckpt_io.load_model_state(self.raw_model, ckpt, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        for group in self.optimizer.param_groups:        # saved groups carry the old run's settings
            group["fused"], group["foreach"] = (True, None) if self.fused else (None, None)
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self._lr_of(self.step)
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        state = ckpt.get("trainer", {})
        self.best_val_loss = state.get("best_val_loss", math.inf)
        self.last_val_loss = state.get("last_val_loss")
        rank = self.dist.rank
        if len(ckpt.get("data", [])) == self.dist.world_size:
            self.batches.load_state_dict(ckpt["data"][rank])
            ckpt_io.restore_rng(ckpt["rng"][rank])
        else:
            self._say(f"warning: {path} was written by {len(ckpt.get('data', []))} process(es), this run has "
                      f"{self.dist.world_size}; the data order restarts from the seed")
        self._last_saved = f"{path} (step {self.step})"
        if self.metrics_path and self.dist.is_main:
            self._truncate_metrics(self.step)
        self._say(f"resumed from {path} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log rows written after the checkpoint (a killed run logs steps it never saved)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:        # a line cut short by a kill
                continue
            if row.get("step", 0) <= step:
                kept.append(row)
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.metrics = kept

    # --- output -----------------------------------------------------------------------------------
    def _record(self, row: dict) -> None:
        self.metrics.append(row)
        if getattr(self, "_metrics_file", None):
            self._metrics_file.write(json.dumps(row) + "\n")
            self._metrics_file.flush()              # a killed run keeps every complete line

    def _say(self, message: str, bar_only: bool = False) -> None:
        """Print on rank 0 unless quiet; under a progress bar, log lines stay in the bar."""
        if not self.dist.is_main or self.cfg.quiet:
            return
        bar = getattr(self, "_bar", None)
        if bar is not None and not bar.disable:
            if not bar_only:
                bar.write(message)
        else:
            print(message, flush=True)

    @staticmethod
    def _format_train(row: dict) -> str:
        load = max(row["load_max_ratio"], default=None)
        return (f"step {row['step']} | loss {row['loss']:.4f} | ce {row['ce']:.4f} | lr {row['lr']:.2e} | "
                f"grad {row['grad_norm']:.3f} | {row['tokens_per_s']:,.0f} tok/s"
                + (f" | load max/ideal {load:.2f}" if load is not None else ""))

    def close(self) -> None:
        """Leave the process group if this Trainer joined it."""
        if self.dist.created and dist.is_initialized():
            dist.destroy_process_group()
