"""A wall-clock budget for training: when the time is up, and where the learning-rate cosine should end so
that it ends with the time (the schedule itself is `schedule.py`).
"""

from __future__ import annotations

import time

import torch

from training.distributed import ONE_PROCESS, DistInfo, agree
from training.schedule import CosineSchedule

FIT_STEPS = 10          # a wall-clock budget fits the cosine horizon after 10 steps, refits after 20, 40, ...
TIME_SAFETY = 0.95      # fit the schedule into 95% of the remaining time (the end of a step overshoots)


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
                    f"warmup {schedule.warmup_steps} steps, cosine schedule ends at step {schedule.horizon}")
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
