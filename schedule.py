"""The learning-rate schedule and the wall-clock budget it can be fitted to.

    lr_at(step, peak_lr=..., warmup_steps=W, horizon=H, min_lr_ratio=m)
        = peak_lr * (s+1)/W                                         s < W
        = peak_lr * (m + (1-m) * (1 + cos(pi * (s-W)/(H-W))) / 2)   W <= s < H, then m * peak_lr

Linear warmup, then one cosine decay to a floor: the usual schedule at small budgets (DeepSeek-V3 §4.2
warms up over 2K steps, holds the peak, then decays with a cosine over trillions of tokens). The lr is a
plain function of the step number: the trainer assigns it to the optimizer every step.
"""

from __future__ import annotations

import math
import time

import torch

from distributed import DistInfo, agree

FIT_STEPS = 10          # a wall-clock budget fits the cosine horizon after 10 steps, refits after 20, 40, ...
TIME_SAFETY = 0.95      # fit the schedule into 95% of the remaining time (the end of a step overshoots)
ONE_PROCESS = DistInfo()


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, horizon: int | None, min_lr_ratio: float) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then a cosine to the floor.

    The first step already gets peak_lr/W (not 0: a zero-lr step would be wasted). With no horizon
    (a pure time budget, before the step rate is known) the lr holds at its peak after warmup.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if horizon is None:
        return peak_lr
    if step >= horizon:
        return peak_lr * min_lr_ratio
    progress = (step - warmup_steps) / max(1, horizon - warmup_steps)
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))



def fit_time_horizon(step: int, remaining_s: float, step_s: float, overhead_s_per_step: float) -> int:
    """The optimizer step at which a cosine should end so that it ends with the wall-clock budget.

    step: steps done so far; remaining_s: budget left; step_s: seconds per optimizer step, measured over
    the recent steps (not from the start: the first steps pay one-off costs, and a shared machine
    changes speed); overhead_s_per_step: evaluation, samples and saves, spread over the steps.
    """
    per_step = step_s + overhead_s_per_step
    return step + max(0, int(TIME_SAFETY * remaining_s / per_step))


class TimeBudget:
    """A wall-clock budget for one `Trainer.train()` call: whether the time is up, and where the cosine
    should end so that it ends with the time.

    The horizon is fitted after FIT_STEPS steps and refitted after 2x, 4x, ... as many, each time from
    the step rate of the steps since the previous fit (the first step, which pays one-off costs, is
    not timed), so one slow start or a busy spell does not fix the schedule for the whole run. Until
    an evaluation has been timed, its cost is estimated as `eval_share` of a step. Under DDP the ranks
    agree: the time is up when it is up for any rank, and the horizon is the smallest one.
    """

    def __init__(self, minutes: float, eval_share: float = 0.0, dist_info: DistInfo = ONE_PROCESS,
                 device: torch.device | None = None):
        self.seconds, self.eval_share = minutes * 60, eval_share
        self.dist, self.device = dist_info, device
        self.started = time.perf_counter()
        self.steps, self.train_s = 0, 0.0          # optimizer steps of this call and their seconds
        self.window = (0, 0.0)                     # (steps, train_s) at the previous fit
        self.fit_at = FIT_STEPS
        self.up = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record_step(self, seconds: float) -> bool:
        """Count one optimizer step; True when the horizon is due for a (re)fit."""
        self.steps += 1
        self.train_s += seconds
        if self.steps == 1:
            self.window = (1, self.train_s)
        self.up = bool(agree(self.elapsed() >= self.seconds, self.dist, self.device, "max"))
        return self.steps == self.fit_at and not self.up

    def refit(self, schedule: CosineSchedule, step: int, evaluated: bool, cap: int | None) -> str | None:
        """Fit `schedule`'s horizon (capped by a step/epoch budget); a message when it moved by > 2%."""
        fits, step_s = self.fit(step, evaluated)
        previous = schedule.horizon
        schedule.set_horizon(min(fits, cap) if cap else fits)
        if previous is None or abs(schedule.horizon - previous) > 0.02 * previous:
            return (f"time budget: ~{fits} steps fit in {self.seconds / 60:g} min ({step_s:.2f} s/step); "
                    f"cosine schedule ends at step {schedule.horizon}")
        return None

    def fit(self, step: int, evaluated: bool) -> tuple[int, float]:
        """(the step at which the cosine should end, the measured seconds per step)."""
        step_s = (self.train_s - self.window[1]) / (self.steps - self.window[0])
        if evaluated:               # measured: everything outside the training steps, per step so far
            overhead = (self.elapsed() - self.train_s) / self.steps
        else:
            overhead = step_s * self.eval_share
        fits = fit_time_horizon(step, self.seconds - self.elapsed(), step_s, overhead)
        self.window, self.fit_at = (self.steps, self.train_s), 2 * self.fit_at
        return int(agree(fits, self.dist, self.device, "min")), step_s


class CosineSchedule:
    """The run's schedule: `lr(step)` = `lr_at` with this run's peak, warmup, floor and horizon.

    The horizon is known up front for a step or epoch budget; a wall-clock budget sets it later
    (`set_horizon`, from `TimeBudget.fit`), and may shorten a step budget's horizon. The warmup is
    cfg.warmup_steps capped at 10% of the horizon (20 steps of a 100-step warmup teach nothing). It
    only ever shrinks: a shorter horizon shrinks it with the cosine (else a time budget shorter than
    the warmup would end the run still climbing), and a refitted, longer horizon must not send the lr
    back into its warmup ramp.
    """

    def __init__(self, peak_lr: float, warmup_steps: int, min_lr_ratio: float, horizon: int | None):
        self.peak_lr, self.min_lr_ratio = peak_lr, min_lr_ratio
        self.horizon: int | None = None
        self.warmup_steps = warmup_steps
        self.set_horizon(horizon)

    def set_horizon(self, horizon: int | None) -> None:
        if horizon is not None:
            self.warmup_steps = min(self.warmup_steps, horizon // 10)
        self.horizon = horizon

    def lr(self, step: int) -> float:
        return lr_at(step, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, horizon=self.horizon,
                     min_lr_ratio=self.min_lr_ratio)
