"""Rotary position embedding (RoPE, Su et al. 2021), in DeepSeek's layout.

Pairs of adjacent features (x0, x1), (x2, x3), ... are rotated by an angle that grows with the
position m:  (x_2i, x_2i+1) -> (x_2i cos m*w_i - x_2i+1 sin m*w_i,  x_2i sin m*w_i + x_2i+1 cos m*w_i)
with w_i = theta^(-2i/R). Then q_m . k_n depends on m - n only. This is the interleaved convention
of DeepSeek-V3's inference code (docs/maths.md §1.3); HF's `rope_interleave=True` gives the same
dot products.

The tables are precomputed once (cos, sin of shape (context, R/2)) and applied to any slice
of a tensor whose last dimension is R: MLA rotates only its decoupled d_h^R part.

Shapes: T tokens, R rotated features (even), P = R/2 pairs.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_tables(rope_dim: int, max_positions: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m * w_i for m < max_positions, i < rope_dim/2; each (max_positions, P)."""
    if rope_dim % 2:
        raise ValueError(f"rope_dim={rope_dim} must be even (RoPE rotates pairs)")
    inv_freq = theta ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)   # (P,)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)     # (T, P)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of x (..., T, ..., R) -- see `RotaryEmbedding`.

    cos, sin: (T, P) already sliced to x's positions, or (B, T, P) when each row has its own
    positions (a left-padded batch); x is (B, T, R) or (B, T, H, R).
    """
    pairs = x.float().unflatten(-1, (-1, 2))                  # (..., P, 2)
    x_even, x_odd = pairs[..., 0], pairs[..., 1]              # (..., P)
    if x.dim() == 4:                                          # (B, T, H, R): broadcast over heads
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)       # ([B,] T, 1, P)
    rotated = torch.stack((x_even * cos - x_odd * sin,
                           x_even * sin + x_odd * cos), dim=-1)  # (..., P, 2)
    return rotated.flatten(-2).type_as(x)                     # (..., R)


class RotaryEmbedding(nn.Module):
    """Holds the precomputed tables; `forward(x, start)` rotates x at positions start..start+T-1, or at
    `positions` (B, T), one row of positions per sequence (a left-padded batch, see kv_cache.py)."""

    def __init__(self, rope_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        cos, sin = rope_tables(rope_dim, max_positions, theta)
        # Buffers, not parameters: moved with .to(device), excluded from the optimizer and checkpoints.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is not None:                 # (B, T): the same table rows, gathered per sequence
            return apply_rope(x, self.cos[positions], self.sin[positions])
        T = x.shape[1]
        if start + T > self.cos.shape[0]:
            raise ValueError(f"position {start + T} exceeds the RoPE table of {self.cos.shape[0]} positions; "
                             "raise context_length or crop the prompt")
        return apply_rope(x, self.cos[start:start + T], self.sin[start:start + T])
