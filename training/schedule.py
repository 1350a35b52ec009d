"""The learning-rate schedule: linear warmup, then one cosine to a floor (`time_budget.py` fits its horizon
to a wall-clock budget).

    lr_at(step, peak_lr=..., warmup_steps=W, horizon=H, min_lr_ratio=m)
        = peak_lr * (s+1)/W                                         s < W
        = peak_lr * (m + (1-m) * (1 + cos(pi * (s-W)/(H-W))) / 2)   W <= s < H, then m * peak_lr

Linear warmup, then one cosine decay to a floor: the usual schedule at small budgets (DeepSeek-V3 §4.2
warms up over 2K steps, holds the peak, then decays with a cosine over trillions of tokens). The lr is a
plain function of the step number: the trainer assigns it to the optimizer every step.
"""

from __future__ import annotations

import math


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
        self.requested_warmup = self.warmup_steps = warmup_steps
        self.set_horizon(horizon)

    def set_horizon(self, horizon: int | None) -> None:
        if horizon is not None:
            self.warmup_steps = min(self.warmup_steps, horizon // 10)
        self.horizon = horizon

    def describe(self) -> str:
        """The warmup and horizon this run will use (the printed config shows the requested warmup_steps)."""
        capped = (f" (warmup_steps={self.requested_warmup} capped at 10% of the horizon)"
                  if self.warmup_steps < self.requested_warmup else "")
        end = (f"cosine to {self.min_lr_ratio:g} x lr at step {self.horizon}" if self.horizon is not None
               else "the horizon is fitted to the time budget after the first steps (the warmup is at most 10% of it)")
        return f"lr schedule: warmup {self.warmup_steps} steps{capped}, {end}"

    def lr(self, step: int) -> float:
        return lr_at(step, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, horizon=self.horizon,
                     min_lr_ratio=self.min_lr_ratio)
