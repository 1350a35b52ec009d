"""Batches of (input, target) windows from a flat array of token ids.

A window holds context_length+1 consecutive tokens; the input is its first T tokens and the
target the last T, so position t learns to predict token t+1 (next-token prediction):
    x = ids[s : s+T]        y = ids[s+1 : s+T+1]
Training draws windows at random offsets (nanoGPT's get_batch), from a private torch.Generator
whose state is a plain uint8 tensor: saving it with the checkpoint makes a resumed run draw
exactly the batches the uninterrupted run would have drawn. Evaluation walks the split in
order with non-overlapping windows, so every validation loss is computed on the same tokens.

Shapes: B batch size, T context length.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from constants import SEED


def _as_ids(ids, context_length: int, batch_size: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"token ids must be a 1-D array, got shape {tuple(ids.shape)}")
    if int(batch_size) < 1 or int(context_length) < 1:
        raise ValueError(f"batch_size={batch_size} and context_length={context_length} must both be >= 1")
    if ids.size < context_length + 1:
        raise ValueError(f"need at least context_length+1 = {context_length + 1:,} tokens for one window, "
                         f"have {ids.size:,}; use more data or a smaller context_length")
    return ids


def _windows(ids: np.ndarray, starts: np.ndarray, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows of T+1 tokens at `starts` and cut them into (x, y)."""
    index = starts[:, None] + np.arange(context_length + 1)                  # (B, T+1)
    window = torch.from_numpy(ids[index].astype(np.int64))                   # (B, T+1)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()           # (B, T), (B, T)


class TrainBatches:
    """Random training windows with an exactly resumable position.

    Args:
        ids: 1-D token ids of the training split (uint16 array, or anything np.asarray accepts).
        batch_size: B, windows per batch.
        context_length: T, tokens per input window.
        seed: seeds the private generator (the global torch RNG is never touched).
    """

    def __init__(self, ids, batch_size: int, context_length: int, seed: int = SEED):
        self.ids = _as_ids(ids, context_length, batch_size)
        self.batch_size = int(batch_size)
        self.context_length = int(context_length)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.tokens_seen = 0

    @property
    def epoch(self) -> float:
        """Passes over the split so far, in tokens drawn (random windows, so an estimate of coverage)."""
        return self.tokens_seen / len(self.ids)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (x, y): int64 CPU tensors of shape (B, T); y is x shifted left by one token."""
        n_starts = len(self.ids) - self.context_length                      # valid starts: 0 .. n-T-1
        starts = torch.randint(n_starts, (self.batch_size,), generator=self.generator)   # (B,)
        self.tokens_seen += self.batch_size * self.context_length
        return _windows(self.ids, starts.numpy(), self.context_length)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()

    def state_dict(self) -> dict:
        """Plain data (ints and a uint8 tensor), loadable with torch.load(weights_only=True)."""
        return {"generator_state": self.generator.get_state(), "tokens_seen": self.tokens_seen,
                "n_tokens": len(self.ids), "batch_size": self.batch_size, "context_length": self.context_length}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by `state_dict`; the same data and shapes are required."""
        expected = {"n_tokens": len(self.ids), "batch_size": self.batch_size, "context_length": self.context_length}
        mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k} saved {saved} vs now {now}" for k, (saved, now) in mismatched.items())
            raise ValueError(f"cannot resume the batch position: {detail}; resume with the same data and settings")
        self.generator.set_state(state["generator_state"])
        self.tokens_seen = int(state["tokens_seen"])


def eval_batches(ids, batch_size: int, context_length: int,
                 max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, non-overlapping windows: starts 0, T, 2T, ...; the last batch may be smaller.

    Together the targets cover ids[1 : 1 + n_windows*T] exactly once, n_windows = (len-1) // T.
    """
    ids = _as_ids(ids, context_length, batch_size)
    starts = np.arange((len(ids) - 1) // context_length) * context_length    # (n_windows,)
    for i, first in enumerate(range(0, len(starts), batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        yield _windows(ids, starts[first:first + batch_size], context_length)
