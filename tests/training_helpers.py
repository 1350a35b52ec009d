"""Shared pieces of the trainer/checkpoint/CLI/DDP tests: tiny configs, synthetic data, a list batch source.

Synthetic token ids keep these tests about the training loop, not about text: a 256-token
vocabulary (instead of GPT-2's 50,257) makes every step a few milliseconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from constants import TINY
from trainer import TrainConfig

VOCAB = 256


def tiny_cfg(**overrides):
    """TINY with a 256-token vocabulary (plus any overrides)."""
    return replace(TINY, vocab_size=VOCAB, **overrides)


def pattern_ids(n_tokens: int, seed: int = 0) -> np.ndarray:
    """Learnable ids: runs of counting sequences (t, t+1, t+2, ...) with random starts, as uint16."""
    rng = np.random.default_rng(seed)
    pieces, total = [], 0
    while total < n_tokens:
        start, length = rng.integers(0, VOCAB), rng.integers(8, 40)
        pieces.append((start + np.arange(length)) % VOCAB)
        total += length
    return np.concatenate(pieces)[:n_tokens].astype(np.uint16)


def train_cfg(out_dir: Path | str | None, **overrides) -> TrainConfig:
    """Small, quiet, CPU-only training settings for tests."""
    base = dict(batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=2, max_steps=10, eval_every=0, eval_batches=2,
                save_every=0, log_every=1, sample_tokens=0, out_dir=str(out_dir) if out_dir else None,
                device="cpu", quiet=True)
    return TrainConfig(**(base | overrides))


class ListBatches:
    """Hands out fixed micro-batches: rank r's k-th draw is batches[k * world_size + r].

    With world_size=1 and grad_accum=2W, one process sees exactly the micro-batches that W
    processes with grad_accum=2 see together, which is what the DDP equivalence test needs.
    """

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], rank: int = 0, world_size: int = 1):
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.position = 0
        self.epoch = 0.0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batches[self.position * self.world_size + self.rank]
        self.position += 1
        return x.clone(), y.clone()

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def fixed_batches(n: int, batch_size: int, context_length: int, seed: int = 0) -> list:
    """n (x, y) micro-batches cut from pattern_ids."""
    ids = torch.from_numpy(pattern_ids(n * batch_size * (context_length + 1) + 1, seed).astype(np.int64))
    windows = ids[: n * batch_size * (context_length + 1)].view(n, batch_size, context_length + 1)
    return [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]


ESSAY_WORDS = ("startup founders users money ideas work programming language hackers growth product investors "
               "write essays think hard problems make something people want good great best way learn").split()


def write_corpus(folder: Path, n_essays: int = 12, words_per_essay: int = 400, seed: int = 0) -> Path:
    """A folder of small synthetic .txt essays, enough for a TINY model's train and val splits."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_essays):
        words = rng.choice(ESSAY_WORDS, size=words_per_essay)
        sentences = [" ".join(words[j:j + 12]).capitalize() + "." for j in range(0, words_per_essay, 12)]
        (folder / f"essay_{i:02d}.txt").write_text(f"Essay {i}\n\n" + " ".join(sentences) + "\n")
    return folder
