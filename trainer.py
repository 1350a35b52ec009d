"""One plain training loop for train.py, the notebooks and the ablations.

    train_step(model, optimizer, batches, cfg, lr=...)   one optimizer step (read it top to bottom)
    evaluate(model, val_ids, ...)                         mean validation cross-entropy
    schedule.lr_at(step, ...)                             the learning rate of each step
    Trainer(model_cfg, train_cfg, data).train()           the loop around them: budgets, evaluation,
                                                          checkpoints, samples and the metrics log

Per optimizer step (the unit that `max_steps`, the schedule and the logs count):
    for each of grad_accum micro-batches:    loss / grad_accum -> backward    (DDP: no_sync but the last)
    check loss and gradient norm are finite  (else stop before touching the weights)
    clip the gradient norm, set this step's lr, AdamW step
    loads = sum of each MoE layer's tokens_per_expert over the micro-batches (all-reduced under DDP)
    router.update_bias(loads)                 once per step, DeepSeek-V3 §2.1.2 (sign rule, rate gamma)

The learning rate warms up linearly, then follows a cosine to a floor (training/schedule.py: `lr_at`, and
`TimeBudget` for a wall-clock budget). It is computed from the step number and assigned to the
optimizer every step (no scheduler object), so a resumed run needs nothing but the step. AdamW
decays only matrices: norms, biases and the embedding (also the tied output head) are left alone,
because pulling a gain or a token's vector toward zero is not regularisation, it is damage.

Everything a resumed run needs (weights, optimizer, RNGs, sampler position, router biases) goes into
`latest.pt` (`Trainer.state_dict()`), so N steps + resume + N steps reproduces 2N uninterrupted steps.
The save before it stays as `previous.pt`: if the very next loss comes out non-finite, latest.pt holds
the weights that produced it, and the run rolls latest.pt back to previous.pt, the last checkpoint
whose weights and following loss were both finite (weights that are not finite are never saved).
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel, ForwardStats
from data import TrainBatches, eval_batches
from training import checkpoint as ckpt_io
from training.compile import compile_model
from training.config import TrainConfig
from training.distributed import (
    ONE_PROCESS,
    DistInfo,
    close_distributed,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    sum_over_ranks,
    wrap_ddp,
)
from training.expert_parallel import ExpertSharding
from training.fast_head import head_loss_for
from training.precision import backward, choose_precision, optimizer_step, unscale_and_clip
from training.run_checkpoints import RunCheckpoints
from training.run_log import RunLog
from training.schedule import CosineSchedule
from training.time_budget import TimeBudget
from utils import get_tokenizer, pick_device, set_seed

SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 40


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before the weights were touched."""

    def __init__(self, values: str, step: int | None = None, last_good: str | None = None, note: str | None = None):
        self.values = values
        where = f" at step {step}" if step is not None else ""
        resume = f"; last good checkpoint: {last_good}, continue from it with --resume" if last_good else \
            "; last good checkpoint: none yet"
        super().__init__(f"non-finite loss/gradient{where} ({values}): stopped before updating the weights"
                         f"{'; ' + note if note else ''}{resume if step is not None else ''}; "
                         "lower --lr, raise warmup, or check the data")

    def at(self, step: int, last_good: str | None, note: str | None = None) -> NonFiniteLossError:
        """The same error, saying at which step and which checkpoint to resume from."""
        return NonFiniteLossError(self.values, step, last_good, note)


# --- the optimizer ----------------------------------------------------------------------------------

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


# --- one optimizer step, and evaluation ----------------------------------------------------------

def logged_losses(loss: torch.Tensor, stats: ForwardStats) -> dict[str, torch.Tensor]:
    """The scalars of one forward that the metrics log keeps."""
    values = {"loss": loss.detach(), "ce": stats.ce, "balance_loss": stats.balance_loss}
    values |= {f"balance_{name}": value for name, value in stats.balance_losses.items()}
    if stats.mtp_loss is not None:
        values["mtp_loss"] = stats.mtp_loss
    return values


def load_stats(counts: torch.Tensor) -> dict:
    """Expert-load summary of one MoE layer from its per-expert token counts c_i (E,)."""
    counts = counts.float()
    mean = counts.mean().item()
    return {"max_ratio": counts.max().item() / mean if mean > 0 else 0.0,   # 1.0 = perfectly balanced
            "dead": int((counts == 0).sum().item())}


def load_summary(loads: torch.Tensor | None) -> dict:
    """Per MoE layer, from the step's (layers, E + 1) loads: counts, max/ideal ratio, dead experts, drops."""
    if loads is None:
        return {"expert_counts": [], "load_max_ratio": [], "dead_experts": [], "dropped_tokens": []}
    per_layer = [load_stats(counts) for counts in loads[:, :-1]]
    return {"expert_counts": loads[:, :-1].tolist(),
            "load_max_ratio": [round(s["max_ratio"], 4) for s in per_layer],
            "dead_experts": [s["dead"] for s in per_layer],
            "dropped_tokens": loads[:, -1].tolist()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches, cfg: TrainConfig, *, lr: float,
               device: torch.device, dist_info: DistInfo = ONE_PROCESS, autocast=nullcontext,
               scaler: torch.amp.GradScaler | None = None, experts: ExpertSharding | None = None) -> dict:
    """One optimizer step over cfg.grad_accum micro-batches from `batches.next()`; returns the logged values.

    Logged: loss, ce, balance losses, mtp_loss (averaged over micro-batches and ranks), lr, grad_norm
    (before clipping), per MoE layer the expert loads, and with an fp16 `scaler` whether the step was
    skipped (an overflowed gradient: no update, no bias change, the scale halves; see precision.py).
    Raises NonFiniteLossError, before the weights are touched, if the loss (or, without a scaler, the
    gradient norm) is not finite. `experts`: the model's experts are sharded over the ranks (expert
    parallelism): their gradients are rescaled and the norm is the global one (training/expert_parallel.py).
    """
    raw_model = ckpt_io.unwrap(model)                     # the model inside DDP / torch.compile
    optimizer.zero_grad(set_to_none=True)
    sums, loads = {}, None
    for micro in range(cfg.grad_accum):
        x, y = (t.to(device, non_blocking=True) for t in batches.next())
        # DDP all-reduces the gradients in every backward unless told otherwise: in the last one only
        sync = micro == cfg.grad_accum - 1 or not dist_info.enabled
        with nullcontext() if sync else model.no_sync():
            with autocast():
                _, loss, stats = model(x, y, head_loss=head_loss_for(model, x, y))   # fused on fp32 CPU
            backward(loss / cfg.grad_accum, scaler)          # loss.backward(), via the fp16 scaler if any
        for name, value in logged_losses(loss, stats).items():
            sums[name] = sums.get(name, 0.0) + value.float() / cfg.grad_accum
        if stats.moe:                                     # (layers, E + 1): tokens per expert, then dropped
            counts = torch.stack([torch.cat([s.tokens_per_expert, s.dropped_tokens.view(1)]) for s in stats.moe])
            loads = counts if loads is None else loads + counts
    # the true gradient norm before clipping (with an infinite threshold, clipping only measures)
    if experts is None:
        params = [p for p in raw_model.parameters() if p.grad is not None]
        grad_norm = unscale_and_clip(optimizer, scaler, params, cfg.grad_clip)
    else:                          # expert grads: summed over ranks -> mean; the norm over every rank's experts
        experts.scale_grads()
        if scaler is not None:
            experts.unscale_(scaler, optimizer)          # every rank skips an overflowed step together
        grad_norm = experts.clip(cfg.grad_clip)
    names = sorted(sums)
    means = mean_over_ranks(torch.stack([sums[k] for k in names]), dist_info).tolist()
    logged = dict(zip(names, means, strict=True)) | {"lr": lr, "grad_norm": grad_norm.item()}
    if not (math.isfinite(logged["loss"]) and (scaler is not None or math.isfinite(logged["grad_norm"]))):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss={logged['loss']}, grad_norm={logged['grad_norm']}")
    for group in optimizer.param_groups:                  # this step's lr, from the schedule
        group["lr"] = lr
    skipped = optimizer_step(optimizer, scaler)           # AdamW (fp16: unless a gradient overflowed)
    if scaler is not None:
        logged["skipped_step"] = skipped
    # aux-loss-free balancing (DeepSeek-V3 §2.1.2): one bias update from the whole step's loads,
    # summed over micro-batches and ranks, so that every rank applies the same update
    if loads is not None and not skipped:
        loads = sum_over_ranks(loads, dist_info)
        for router, counts in zip(raw_model.routers(), loads[:, :-1], strict=True):
            router.update_bias(counts)
    return logged | load_summary(loads)


@torch.no_grad()
def evaluate(model: nn.Module, val_ids, *, batch_size: int, context_length: int, max_batches: int | None,
             device: torch.device, autocast=nullcontext, split_over: DistInfo | None = None,
             progress: str | None = None) -> dict:
    """Mean cross-entropy over the first `max_batches` validation batches (the same tokens every time).

    split_over: every rank of it calls this, takes batches rank, rank + W, ... and the sums are all-reduced
    (expert parallelism: every forward is a collective, so all ranks run the same number of them; a rank
    short of a batch in the last round repeats its first one with weight 0).
    progress: the label of a progress bar (on a terminal only).
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = eval_batches(val_ids, batch_size, context_length, max_batches=max_batches)
    if split_over is not None and split_over.enabled:
        batches, W = list(batches), split_over.world_size
        rounds = math.ceil(len(batches) / W)
        mine = [(batches[i], 1.0) if i < len(batches) else (batches[0], 0.0)
                for i in range(split_over.rank, rounds * W, W)]
    else:
        mine = ((batch, 1.0) for batch in batches)
    if progress:                                          # a console bar, on a terminal only
        n_batches = -(-((len(val_ids) - 1) // context_length) // batch_size)
        shown = min(n_batches, max_batches or n_batches)
        mine = tqdm(mine, total=shown if split_over is None or not split_over.enabled else None, desc=progress,
                    unit="batch", leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())
    try:
        for (x, y), weight in mine:
            with autocast():
                x, y = x.to(device), y.to(device)
                _, _, stats = model(x, y, head_loss=head_loss_for(model, x, y))
            total += weight * stats.ce.item() * y.numel()
            count += weight * y.numel()
    finally:
        model.train(was_training)
    if split_over is not None and split_over.enabled:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)    # nccl reduces device tensors
        total, count = sum_over_ranks(sums, split_over).tolist()
    val_loss = total / count
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}


def sample_texts(model: nn.Module, prompts, n_tokens: int, seed: int) -> list[dict]:
    """Continue each prompt ({prompt, text} or {prompt, text: None, error}); never raises for one prompt.
    Runs on a private RNG stream, so sampling during training leaves a resumed run exact."""

    tokenizer, device = get_tokenizer(), next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        return [_continue(model, tokenizer, prompt, n_tokens, seed, device) for prompt in prompts]


def _continue(model: nn.Module, tokenizer, prompt: str, n_tokens: int, seed: int, device: torch.device) -> dict:
    try:
        ids = tokenizer.encode_ordinary(prompt)
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(idx, n_tokens, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, seed=seed)
        kept = min(len(ids), model.cfg.context_length)
        return {"prompt": prompt, "text": tokenizer.decode(out[0, kept:].tolist())}
    except Exception as err:          # a sample must never cost the training run
        return {"prompt": prompt, "text": None, "error": f"{type(err).__name__}: {err}"}


def resume_path(resume: bool | str | os.PathLike, out_dir: Path | None) -> Path:
    if resume is True and out_dir is None:
        raise ValueError("resume=True needs TrainConfig.out_dir (where latest.pt is); or pass a path")
    return out_dir / "latest.pt" if resume is True else Path(resume)


def check_resumable(ckpt: dict, path) -> None:
    """A latest.pt (with optimizer state) written with this project's tokenizer, or CheckpointError."""
    if ckpt.get("kind") != "latest" or "optimizer" not in ckpt:
        raise ckpt_io.CheckpointError(f"{path} is a '{ckpt.get('kind')}' checkpoint without optimizer state; "
                                      "resume from latest.pt")
    ckpt_io.check_tokenizer(ckpt, path)


def run_summary(trainer: Trainer, reason: str, tokens_per_s: float, elapsed_s: float) -> dict:
    """What `Trainer.train()` returns. stopped_because: 'max_steps' | 'epochs' | 'time_budget' | 'steps'."""
    best = trainer.best_val_loss
    return {"steps": trainer.step, "tokens": trainer.step * trainer.tokens_per_step, "epoch": trainer.epoch,
            "final_val_loss": trainer.last_val_loss, "best_val_loss": best if math.isfinite(best) else None,
            "tokens_per_s": tokens_per_s, "elapsed_s": elapsed_s, "stopped_because": reason,
            "metrics_path": str(trainer.log.path) if trainer.log.path else None,
            "out_dir": str(trainer.out_dir) if trainer.out_dir else None,
            "samples": trainer.samples[-1]["samples"] if trainer.samples else []}


def budget_horizon(cfg: TrainConfig, n_train_tokens: int | None, tokens_per_step: int) -> int | None:
    """Steps the step/epoch budgets allow (the cosine horizon); None if only time limits the run."""
    candidates = [cfg.max_steps] if cfg.max_steps else []
    if cfg.epochs and n_train_tokens is not None:
        candidates.append(math.ceil(cfg.epochs * n_train_tokens / tokens_per_step))
    return min(candidates) if candidates else None


def eval_share(cfg: TrainConfig, context_length: int, val_ids) -> float:
    """Estimated evaluation time per training step, as a fraction of a step (before one is timed):
    an evaluation batch costs about a third of a training micro-batch (no backward)."""
    if not cfg.eval_every or val_ids is None:
        return 0.0
    n_eval = cfg.eval_batches or len(val_ids) // (cfg.batch_size * context_length) + 1
    return n_eval / (3 * cfg.grad_accum * cfg.eval_every)


def check_data(data, train_ids, val_ids, train_batches, context_length: int) -> tuple:
    """(train_ids, val_ids) from `prepare_data` output or the arrays; ValueError if unusable."""
    train_ids = data.train_ids if data is not None else train_ids
    val_ids = data.val_ids if data is not None else val_ids
    if train_ids is None and train_batches is None:
        raise ValueError("Trainer needs data=prepare_data(...), train_ids=..., or train_batches=...")
    if val_ids is not None and len(val_ids) < context_length + 1:
        raise ValueError(f"val_ids has {len(val_ids)} tokens, fewer than one window of context_length+1 = "
                         f"{context_length + 1}; pass more validation tokens or val_ids=None")
    return train_ids, val_ids


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """Train a DeepSeekModel from a ModelConfig (the architecture) and a TrainConfig (how to train):
    `train()` loops `train_step` until a budget runs out and returns a summary; `metrics` holds the rows.

    data: `data.prepare_data(...)` output, or pass `train_ids=` / `val_ids=` (1-D token arrays);
    train_batches: anything with TrainBatches' interface (`next()`, `state_dict()`, `load_state_dict()`,
    `epoch`) instead of the random sampler; resume: True (out_dir/latest.pt) or a checkpoint path.
    expert_parallel: under torchrun, shard the routed experts over all the ranks (the rest stays
    data-parallel): training/expert_parallel.py. Evaluation and samples then run on every rank.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig | None = None, data=None, *,
                 train_ids=None, val_ids=None, train_batches=None, resume: bool | str | os.PathLike = False,
                 expert_parallel: bool = False):
        cfg, self.model_cfg = train_cfg or TrainConfig(), model_cfg
        self.cfg = cfg
        # 1) processes and device
        self.dist = init_distributed(cfg.device)
        self.device = pick_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.precision = choose_precision(self.device, cfg.dtype)     # fp32 on CPU; see precision.py
        self.autocast_dtype, self._autocast = self.precision.autocast_dtype, self.precision.autocast
        if expert_parallel and not (self.dist.enabled and model_cfg.ffn == "moe"):
            raise ValueError("expert parallelism needs an MoE model (ffn='moe') and several processes: "
                             "torchrun --nproc_per_node N train.py --expert-parallel N")
        # 2) data: each rank draws its own random windows (seed + rank)
        self.train_ids, self.val_ids = check_data(data, train_ids, val_ids, train_batches, model_cfg.context_length)
        self.batches = train_batches if train_batches is not None else TrainBatches(
            self.train_ids, cfg.batch_size, model_cfg.context_length, seed=cfg.seed + self.dist.rank)
        # 3) model: the same init on every rank, then per-rank randomness (dropout, router noise)
        set_seed(cfg.seed)
        self.raw_model = DeepSeekModel(model_cfg)
        # expert parallelism: keep this rank's experts (before moving: the device holds only the shard)
        self.experts = ExpertSharding(self.raw_model, split_decay) if expert_parallel else None
        self.raw_model.to(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = compile_model(self.raw_model) if cfg.compile else self.raw_model   # training/compile.py
        if self.dist.enabled:                 # DDP over the replicated weights; the sharded experts excluded
            ignore = self.experts.ddp_ignore(self.model) if self.experts else ()
            self.model = wrap_ddp(self.model, self.device, has_experts=model_cfg.ffn == "moe" and not self.experts,
                                  ignore=ignore)
        self.scaler = self.precision.make_scaler()                    # fp16 only
        # 4) optimizer, schedule horizon and bookkeeping
        self.optimizer, self.fused = make_optimizer(self.raw_model, cfg)
        self.tokens_per_step = cfg.batch_size * model_cfg.context_length * cfg.grad_accum * self.dist.world_size
        n_train = None if self.train_ids is None else len(self.train_ids)
        self.budget_steps = budget_horizon(cfg, n_train, self.tokens_per_step)     # None: only time limits it
        self.schedule = CosineSchedule(cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio, self.budget_steps)
        self.step, self.best_val_loss, self.last_val_loss, self.samples = 0, math.inf, None, []
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.checkpoints = RunCheckpoints(self.out_dir if self.dist.is_main else None)   # latest / previous / best
        path = self.out_dir / "metrics.jsonl" if self.out_dir and self.dist.is_main else None
        self.log = RunLog(path, quiet=cfg.quiet or not self.dist.is_main)
        self.metrics = self.log.rows                      # the logged rows (see training/run_log.py)
        if resume:
            where = resume_path(resume, self.out_dir)
            self.load_state_dict(ckpt_io.load_checkpoint(where, map_location="cpu"), where)  # CPU RNG states
        if self.out_dir and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale_temp_files(self.out_dir)

    @property
    def epoch(self) -> float:                                 # passes over the training tokens, all ranks
        return float(getattr(self.batches, "epoch", 0.0)) * self.dist.world_size

    def _stop_reason(self, target: int | None, budget: TimeBudget | None) -> str | None:
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.epochs is not None and self.epoch >= self.cfg.epochs:
            return "epochs"
        if budget and budget.up:
            return "time_budget"
        return "steps" if target is not None and self.step >= target else None


    # --- the loop -------------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> dict:
        """Train until a budget runs out (or for `steps` more steps); returns `run_summary(...)`. The logged
        rows are in `self.metrics`. Raises NonFiniteLossError, the last good checkpoint untouched."""
        cfg, target = self.cfg, None if steps is None else self.step + steps
        budget = cfg.time_budget_min and TimeBudget(cfg.time_budget_min, eval_share(
            cfg, self.model_cfg.context_length, self.val_ids), self.dist, self.device)
        started, train_s, steps_done, evaluated_at, saved_at = time.perf_counter(), 0.0, 0, None, None
        logged_at = (0.0, 0)                                  # (train seconds, steps) at the last train row
        self.log.open_bar(total=self.schedule.horizon or cfg.max_steps, initial=self.step)
        try:
            while (reason := self._stop_reason(target, budget)) is None:
                self.raw_model.train()
                step_started = time.perf_counter()
                try:
                    row = train_step(self.model, self.optimizer, self.batches, cfg, lr=self.schedule.lr(self.step),
                                     device=self.device, dist_info=self.dist, autocast=self._autocast,
                                     scaler=self.scaler, experts=self.experts)
                except NonFiniteLossError as err:
                    raise err.at(self.step + 1, *self.checkpoints.roll_back(self.step)) from None
                self.step, steps_done = self.step + 1, steps_done + 1
                train_s += time.perf_counter() - step_started
                self.log.bar.update(1)
                if budget and budget.record_step(time.perf_counter() - step_started):      # time to refit
                    self.log.say(budget.refit(self.schedule, self.step, evaluated_at is not None,
                                              cap=self.budget_steps))
                    self.log.bar.total = self.schedule.horizon
                if self.step % cfg.log_every == 0 or steps_done == 1:
                    seconds = max(train_s - logged_at[0], 1e-9)
                    tokens_per_s = (steps_done - logged_at[1]) * self.tokens_per_step / seconds
                    self.log.train_row({"kind": "train", "step": self.step, "epoch": round(self.epoch, 5),
                                        "tokens": self.step * self.tokens_per_step, **row, "tokens_per_s": tokens_per_s,
                                        "elapsed_s": round(time.perf_counter() - started, 3)})
                    logged_at = (train_s, steps_done)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    evaluated_at = self._evaluate_and_keep_best()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    saved_at = self.save_latest()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.sample()
            if steps_done:
                self._finish(evaluated_at, saved_at)
        finally:
            self.log.close()
        return run_summary(self, reason, steps_done * self.tokens_per_step / max(train_s, 1e-9),
                           time.perf_counter() - started)

    def _finish(self, evaluated_at: int | None, saved_at: int | None) -> None:
        """End of a train() call: final evaluation, latest.pt, and the closing samples."""
        if evaluated_at != self.step:
            self._evaluate_and_keep_best()
        if saved_at != self.step:
            self.save_latest()
        if self.val_ids is None and (self.dist.is_main or self.experts):
            self._save_best(None)              # no val split: the final weights are the "best" we know
        if not self.cfg.sample_every or self.step % self.cfg.sample_every:
            self.sample()

    # --- evaluation, samples, checkpoints -------------------------------------------------------------
    def evaluate(self, max_batches: int | None) -> dict | None:
        """`evaluate` on the validation split: rank 0 alone (the others go on), or under expert parallelism
        every rank on its share of the batches (every forward is a collective); None where not evaluated."""
        if self.val_ids is None or not (self.dist.is_main or self.experts):
            return None
        return evaluate(self.raw_model, self.val_ids, batch_size=self.cfg.batch_size,
                        context_length=self.model_cfg.context_length, max_batches=max_batches,
                        device=self.device, autocast=self._autocast, split_over=self.dist if self.experts else None)

    def _evaluate_and_keep_best(self) -> int:
        if (result := self.evaluate(self.cfg.eval_batches)) is not None:
            self.last_val_loss = result["val_loss"]
            if improved := result["val_loss"] < self.best_val_loss:
                self.best_val_loss = result["val_loss"]
                self._save_best(result["val_loss"])
            self.log.eval_row({"kind": "eval", "step": self.step, "epoch": round(self.epoch, 5), **result,
                               "best_val_loss": self.best_val_loss}, improved)
        return self.step

    def evaluate_whole_split(self) -> dict | None:
        """The loss of the final model on the whole validation split: the number to compare between runs
        (the evaluations during training cover the first `eval_batches` batches only). Logged as a row of
        kind 'eval_whole' (metrics.jsonl, TensorBoard `eval_whole/val_loss`) and written into best_model.*
        as `trainer.whole_val_loss` (of the best weights: when the best checkpoint is an earlier step, its
        weights are evaluated too). None on ranks other than 0 or without a validation split. Under expert
        parallelism every rank must call it: each rank evaluates its share (every forward is a collective)."""
        if self.val_ids is None or not (self.dist.is_main or self.experts):
            return None
        context = self.model_cfg.context_length
        n_tokens = (len(self.val_ids) - 1) // context * context
        self.log.say(f"evaluating the final model on the whole validation split ({n_tokens:,} tokens)...")

        def whole(model, split_over: DistInfo | None = None) -> dict:
            return evaluate(model, self.val_ids, batch_size=self.cfg.batch_size, context_length=context,
                            max_batches=None, device=self.device, autocast=self._autocast, split_over=split_over,
                            progress=None if self.cfg.quiet else "whole validation split")

        result = whole(self.raw_model, self.dist if self.experts else None) | {"val_tokens": n_tokens}
        if not self.dist.is_main:
            return None
        self.log.record({"kind": "eval_whole", "step": self.step, "epoch": round(self.epoch, 5), **result})
        best = self.checkpoints.out_dir and self.checkpoints.out_dir / "best_model.pt"
        if best and best.is_file():
            ckpt = ckpt_io.load_checkpoint(best, map_location="cpu")
            if int(ckpt["step"]) == self.step:
                best_loss = result["val_loss"]
            else:                                # the best weights are an earlier step's: measure them too
                model = DeepSeekModel(self.model_cfg).to(self.device)
                ckpt_io.load_model_state(model, ckpt, best)
                best_loss = whole(model)["val_loss"]
                self.log.say(f"best model (step {ckpt['step']}) on the whole validation split: val loss "
                             f"{best_loss:.4f}")
            ckpt["trainer"] = ckpt.get("trainer", {}) | {"whole_val_loss": best_loss, "whole_val_tokens": n_tokens}
            self.checkpoints.save_best(ckpt)
        self.log.close()                         # flush metrics.jsonl and the TensorBoard events
        return result

    def sample(self) -> list[dict]:
        """Continue each of cfg.sample_prompts (a warning, never an error, if that fails). Under expert
        parallelism every rank samples the same prompts with the same seed (each forward is a collective, and
        equal inputs give equal tokens, so the ranks stop together); rank 0 keeps the result."""
        if not (self.dist.is_main or self.experts) or not self.cfg.sample_prompts or not self.cfg.sample_tokens:
            return []
        try:
            results = sample_texts(self.raw_model, self.cfg.sample_prompts, self.cfg.sample_tokens, self.cfg.seed)
        except Exception as err:                              # e.g. no tokenizer: warn, keep training
            self.log.say(f"warning: samples skipped, tokenizer unavailable: {err}")
            return []
        if not self.dist.is_main:
            return []
        self.samples.append({"step": self.step, "samples": results})
        self.log.sample_row({"kind": "sample", "step": self.step, "samples": results})
        return results

    def state_dict(self) -> dict:
        """Everything latest.pt holds. Collective under DDP: each rank's RNG and sampler are gathered."""
        per_rank = gather_objects((ckpt_io.capture_rng(), self.batches.state_dict()), self.dist)
        ckpt = self._checkpoint("latest", optimizer=self.optimizer, rng=[rng for rng, _ in per_rank],
                                data=[data for _, data in per_rank], trainer=self._progress())
        return ckpt | ({"grad_scaler": self.scaler.state_dict()} if self.scaler else {})

    def _checkpoint(self, kind: str, optimizer=None, **fields) -> dict:
        """`make_checkpoint` of this run. Under expert parallelism a collective: the experts and their AdamW
        state are gathered to rank 0 in the one-process format (elsewhere 'model'/'optimizer' are None)."""
        ckpt = ckpt_io.make_checkpoint(self.raw_model, step=self.step, kind=kind, train_config=self.cfg.to_dict(),
                                       optimizer=None if self.experts else optimizer, **fields)
        if self.experts:
            ckpt["model"] = self.experts.full_model_state(ckpt["model"])
            if optimizer is not None:
                ckpt["optimizer"] = self.experts.full_optimizer_state(optimizer)
        return ckpt

    def load_state_dict(self, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
        """Continue from a latest.pt; the current TrainConfig's lr and budgets win."""
        check_resumable(ckpt, path)
        if self.experts:                 # one-process format in the file: take this rank's experts
            ckpt = ckpt | {"model": self.experts.local_model_state(ckpt["model"]),
                           "optimizer": self.experts.local_optimizer_state(ckpt["optimizer"])}
        ckpt_io.load_model_state(self.raw_model, ckpt, path)
        # load_checkpoint checked every field's type; what only the optimizer, sampler and RNGs can judge (a
        # group or a state of the wrong size, a generator state torch refuses) is one line naming the part
        restoring = "optimizer"
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for group in self.optimizer.param_groups:          # torch checks the group sizes, not the shapes
                for param in group["params"]:
                    for name, value in self.optimizer.state.get(param, {}).items():
                        if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                            raise ValueError(f"its {name} has shape {tuple(value.shape)}, its parameter "
                                             f"{tuple(param.shape)}")
            if self.scaler is not None and ckpt.get("grad_scaler"):              # fp16: the loss scale goes on
                restoring = "grad_scaler"
                self.scaler.load_state_dict(ckpt["grad_scaler"])
            same_world = len(ckpt.get("data", [])) == self.dist.world_size
            if same_world:
                restoring = "data"
                self.batches.load_state_dict(ckpt["data"][self.dist.rank])
                restoring = "rng"
                ckpt_io.restore_rng(ckpt["rng"][self.dist.rank])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ckpt_io.CheckpointError(f"{path}: its '{restoring}' state cannot be restored ({detail}); the file "
                                          "was damaged, or the data or settings changed: resume with the same ones, "
                                          "use another checkpoint or start a new run") from None
        self.step = int(ckpt["step"])
        progress = ckpt.get("trainer", {})
        self.best_val_loss, self.last_val_loss = progress.get("best_val_loss", math.inf), progress.get("last_val_loss")
        if not same_world:
            self.log.say(f"warning: {path} was written by {len(ckpt.get('data', []))} process(es), this run has "
                         f"{self.dist.world_size}; the data order restarts from the seed")
        self.checkpoints.resumed_from(path, self.step)
        self.log.keep_until(self.step)
        self.log.say(f"resumed from {path} at step {self.step}")

    def _progress(self) -> dict:
        return {"best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "world_size": self.dist.world_size, "tokens": self.step * self.tokens_per_step}

    def save_latest(self) -> int:
        """Write out_dir/latest.pt (resumable; never with non-finite weights); collective under DDP."""
        self.checkpoints.save_latest(self.state_dict(), self.step, self.log.say)
        return self.step

    @property
    def last_saved(self) -> str | None:                       # "path (step N)" of the last good latest.pt
        return self.checkpoints.last_saved

    def _save_best(self, val_loss: float | None) -> None:
        if self.checkpoints.out_dir or (self.experts and self.out_dir):    # expert parallel: every rank gathers
            self.checkpoints.save_best(self._checkpoint("best", trainer=self._progress() | {"val_loss": val_loss}))

    def close(self) -> None:                                  # leave the process group if we joined it
        close_distributed(self.dist)


if __name__ == "__main__":          # python -m trainer plot RUN_DIR: a run's metrics.jsonl -> PNG
    from figures.plotting import plot_cli

    raise SystemExit(plot_cli())
