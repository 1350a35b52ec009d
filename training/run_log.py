"""The metrics log and console output of a training run: rows in memory, metrics.jsonl, a progress bar.

Each row is a dict with a `kind`: 'train' (what `trainer.train_step` logs, plus step, epoch, tokens,
tokens_per_s, elapsed_s), 'eval' (val_loss, val_ppl, best_val_loss) or 'sample' (samples).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

from common.files import atomic_write


def open_no_follow(path: Path, append: bool):
    """Open metrics.jsonl for writing without following a symbolic link there (O_NOFOLLOW): a link someone
    planted in --out would otherwise have its target truncated or appended to. OSError(ELOOP) names it."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise OSError(errno.ELOOP, f"{path.name} is a symbolic link, which is never written through; "
                          "remove it", str(path)) from None
        raise
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8")


class RunLog:
    """The metrics rows (in memory and appended to metrics.jsonl) and the console output of one run.

    The file is opened at the first row: a fresh run that fails before logging anything leaves an
    earlier run's metrics.jsonl as it was; `fresh=False` (a resumed run) appends to it.
    """

    def __init__(self, path: Path | None, quiet: bool, fresh: bool = True):
        self.path, self.quiet, self.fresh = path, quiet, fresh
        self.rows: list[dict] = []
        self.file = self.bar = None
        self.sinks: list = []               # more places each row goes (e.g. TensorBoardLog); closed with the log

    def record(self, row: dict) -> None:
        self.rows.append(row)
        for sink in self.sinks:
            sink.write(row)
        if self.path is not None:
            if self.file is None:
                self.file = open_no_follow(self.path, append=not self.fresh)
                self.fresh = False
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()                     # a killed run keeps every complete line

    def keep_until(self, step: int) -> None:
        """Drop rows logged after `step` (a killed run logs steps it never saved)."""
        if self.path is None or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:          # a line cut short by a kill
                continue
            if row.get("step", 0) <= step:
                kept.append(row)
        # a new file renamed over the old one: a planted symlink is replaced, its target never written
        atomic_write(self.path, lambda handle: handle.write("".join(json.dumps(r) + "\n" for r in kept)), mode="w")
        self.rows[:], self.fresh = kept, False      # in place: Trainer.metrics is this list

    def train_row(self, row: dict) -> None:
        self.record(row)
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}")
        self.say(format_train_row(row), bar_only=True)

    def eval_row(self, row: dict, improved: bool) -> None:
        self.record(row)
        self.say(f"step {row['step']} | val loss {row['val_loss']:.4f} | ppl {row['val_ppl']:.1f}"
                 f"{' (best)' if improved else ''}")

    def sample_row(self, row: dict) -> None:
        self.record(row)
        for r in row["samples"]:
            text = f"{r['prompt']}{r['text']}".replace("\n", " / ")[:200] if r["text"] is not None else r["error"]
            self.say(f"sample @ step {row['step']}: {text}")

    def open_bar(self, total: int | None, initial: int) -> None:
        from tqdm import tqdm  # console bar, on a TTY only (tqdm.auto warns in notebooks)

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=self.quiet or not sys.stderr.isatty())

    def say(self, message: str | None, bar_only: bool = False) -> None:
        """Print unless quiet (or None); under a progress bar, per-step lines stay in the bar."""
        if self.quiet or message is None:
            return
        if self.bar is not None and not self.bar.disable:
            if not bar_only:
                self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.file is not None:
            self.file.close()
            self.file = None
        for sink in self.sinks:
            sink.close()


class TensorBoardLog:
    """The metrics rows as TensorBoard events in `log_dir` (train.py --tensorboard DIR).

    Every number of a row becomes a scalar at the row's optimizer step: `train/loss`, `train/lr`, ...,
    `eval/val_loss`; the per-MoE-layer lists become `load/max_ratio_layer0`, `load/dead_experts_layer0`,
    ...; the samples become text. Needs the optional `tensorboard` package (`check_available`).
    """

    PER_LAYER = {"load_max_ratio": "max_ratio", "dead_experts": "dead_experts", "dropped_tokens": "dropped_tokens"}

    def __init__(self, log_dir: str | Path):
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    @staticmethod
    def check_available() -> None:
        """ValueError (one line, with the fix) when the tensorboard package is not installed."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\"") from None

    def write(self, row: dict) -> None:
        kind, step = row.get("kind"), row.get("step", 0)
        for key, value in row.items():
            if key in self.PER_LAYER:
                for layer, v in enumerate(value):
                    self.writer.add_scalar(f"load/{self.PER_LAYER[key]}_layer{layer}", v, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        if kind == "sample":
            texts = [f"{r['prompt']}{r['text']}" if r.get("text") is not None else str(r.get("error"))
                     for r in row["samples"]]
            self.writer.add_text("samples", "\n\n".join(texts), step)

    def close(self) -> None:
        self.writer.close()          # flushed and closed; a later row (another train() call) opens a new file


def format_train_row(row: dict) -> str:
    load = max(row["load_max_ratio"], default=None)
    return (f"step {row['step']} | loss {row['loss']:.4f} | ce {row['ce']:.4f} | lr {row['lr']:.2e} | "
            f"grad {row['grad_norm']:.3f} | {row['tokens_per_s']:,.0f} tok/s"
            + (f" | load max/ideal {load:.2f}" if load is not None else ""))
