"""TrainConfig: how to train (the model itself is a ModelConfig), one frozen, validated dataclass.

Budgets: training stops at whichever of max_steps, epochs and time_budget_min comes first. `train.py
--set KEY=VALUE` reaches every field, typed by its annotation.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.settings import RULES, Settings, bad_field, check
from constants import SEED
from training.precision import PRECISIONS as DTYPES


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How to train (the model itself is a ModelConfig). Budgets: whichever of steps/epochs/time comes first."""
    # batch, peak lr, weight decay: tuned for SMALL on a 2-core CPU, 10- and 30-min budgets (docs/training_recipe.md)
    batch_size: int = 8                  # sequences per micro-batch (per process under DDP)
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 3e-3                     # peak learning rate
    min_lr_ratio: float = 0.1            # cosine floor, as a fraction of lr
    warmup_steps: int = 100              # at most 10% of the horizon, so short runs still reach lr
    weight_decay: float = 0.5            # decoupled (AdamW), matrices only; 0.5 beat 0.1 at 10 and 30 min
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
    dtype: str = "auto"                  # 'auto' | 'fp32' | 'bf16' | 'fp16' (precision.py: fp32 on CPU/MPS, bf16
                                         # autocast on CUDA >= 8.0, else fp16 autocast with loss scaling)
    quiet: bool = False                  # no progress bar or log lines

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise bad_field(self, name, why)

        check(self, "a positive integer", "batch_size", "grad_accum", "log_every")
        check(self, "an integer >= 0", "warmup_steps", "eval_every", "save_every", "sample_every", "sample_tokens")
        check(self, "None or a positive integer", "max_steps", "eval_batches")
        check(self, "None or a finite number > 0", "epochs", "time_budget_min", "grad_clip")
        check(self, "a finite number >= 0", "weight_decay")
        check(self, "a finite number > 0", "lr")
        check(self, "a number in [0, 1]", "min_lr_ratio")
        check(self, "an integer in [0, 2**63)", "seed")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(RULES["a number in [0, 1)"](b)
                                                                             for b in self.betas)):
            bad("betas", "must be two numbers in [0, 1)")
        if self.epochs is not None and self.epochs > 1e6:
            bad("epochs", "must be at most 1e6 (for no epoch limit leave it None)")
        if self.time_budget_min is not None and self.time_budget_min > 525600:
            bad("time_budget_min", "must be at most a year of minutes, 525600 (for no time limit leave it None)")
        if self.max_steps is None and self.epochs is None and self.time_budget_min is None:
            bad("max_steps", "set at least one budget: max_steps, epochs or time_budget_min")
        if self.dtype not in DTYPES:
            bad("dtype", f"choose one of {DTYPES}")
        if not all(isinstance(p, str) and p for p in self.sample_prompts):
            bad("sample_prompts", "must be non-empty strings")
