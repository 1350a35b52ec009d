"""The checkpoint files of one training run in its --out folder: latest.pt, previous.pt and best_model.*.

latest.pt is rewritten every save_every steps and at the end (resumable: weights, optimizer, RNG and
sampler state); best_model.pt (+ .safetensors and .json) whenever the validation loss improves.
Two rules keep a resumable checkpoint good:
  * weights that are not all finite are never saved: the previous latest.pt stays the last good one;
  * previous.pt keeps the save before latest.pt, so that when the loss goes non-finite right after a
    save, latest.pt (whose weights produced that loss) can be rolled back to a save that did not.
The Trainer owns one RunCheckpoints; checkpoint.py does the writing and reading.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from training import checkpoint as ckpt_io

PREVIOUS_CHECKPOINT = "previous.pt"      # the save before latest.pt, for a rollback after a non-finite loss


def keep_previous(latest: Path, ours: bool) -> None:
    """Before latest.pt is replaced, keep it as previous.pt: a hard link (no copy; latest.pt never missing).

    Only a latest.pt this run wrote or resumed from (`ours`); an earlier run's previous.pt in a folder
    that --overwrite reuses is removed, so a rollback can never land in another run.
    """
    previous = latest.with_name(PREVIOUS_CHECKPOINT)
    if not ours or not latest.exists():
        if not ours:
            with suppress(FileNotFoundError):
                previous.unlink()
        return
    tmp = latest.with_name(f".{PREVIOUS_CHECKPOINT}.{os.getpid()}.tmp")    # a stale one is cleaned at start-up
    try:
        with suppress(FileNotFoundError):
            tmp.unlink()
        os.link(latest, tmp)
        os.replace(tmp, previous)                # atomic: previous.pt is the old or the new one, never half
    except OSError:                              # no hard links on this filesystem: no rollback point
        with suppress(OSError):
            tmp.unlink()


class RunCheckpoints:
    """latest.pt / previous.pt / best_model.* of one run; `out_dir=None` (no folder, or not rank 0) writes nothing."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.last_saved: str | None = None        # "path (step N)" of the last good latest.pt, for messages
        self.saved_step: int | None = None        # step of the latest.pt this run wrote or resumed from

    def resumed_from(self, path: str | os.PathLike, step: int) -> None:
        self.last_saved = f"{path} (step {step})"
        if self.out_dir and Path(path) == self.out_dir / "latest.pt":
            self.saved_step = step                # latest.pt is this run's: previous.pt may follow it

    def save_latest(self, ckpt: dict, step: int, say: Callable[[str], None]) -> None:
        """Write latest.pt from a Trainer.state_dict(), keeping the one before as previous.pt; weights that
        are not all finite are not saved (`say` gets a warning naming the last good checkpoint)."""
        if not self.out_dir:
            return
        if bad := [name for name, t in ckpt["model"].items() if t.is_floating_point() and not t.isfinite().all()]:
            say(f"warning: step {step}: non-finite weights ({', '.join(bad[:3])}); latest.pt not "
                f"overwritten, the last good checkpoint is {self.last_saved or 'none yet'}")
            return
        latest = self.out_dir / "latest.pt"
        keep_previous(latest, ours=self.saved_step is not None)
        path = ckpt_io.atomic_save(ckpt, latest)
        self.last_saved, self.saved_step = f"{path} (step {step})", step

    def roll_back(self, step: int) -> tuple[str | None, str | None]:
        """(checkpoint to resume from, note) after a non-finite loss at step `step` + 1.

        If latest.pt holds exactly the weights whose loss just came out non-finite, resuming from it
        replays the same batch (sampler and RNG are restored) through the same weights: the same loss,
        whatever the lr. The save before it, previous.pt, is the last one whose next loss was finite:
        it becomes latest.pt again, so that --resume starts from it.
        """
        if not (self.out_dir and self.saved_step == step):
            return self.last_saved, None
        latest, previous = self.out_dir / "latest.pt", self.out_dir / PREVIOUS_CHECKPOINT
        note = (f"latest.pt held the weights of step {step}, which produced this loss "
                "(resuming from them repeats it)")
        try:
            saved = int(ckpt_io.load_checkpoint(previous)["step"])
            os.replace(previous, latest)
        except (OSError, ckpt_io.CheckpointError, KeyError, TypeError, ValueError):
            return None, note + "; no earlier checkpoint of this run was kept"
        self.saved_step, self.last_saved = saved, f"{latest} (step {saved})"
        return self.last_saved, note + f", so it was rolled back to the save of step {saved}"

    def save_best(self, ckpt: dict) -> None:
        """best_model.pt, and best_model.safetensors + best_model.json beside it (for other tools)."""
        if self.out_dir:
            ckpt_io.atomic_save(ckpt, self.out_dir / "best_model.pt")
            ckpt_io.save_safetensors(ckpt, self.out_dir / "best_model.safetensors")
