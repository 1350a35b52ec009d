"""A per-layer decoding cache: what attention keeps from past tokens so it never recomputes them.

Each attention kind decides *what* it stores (that is the whole point of MLA):
    MHA/GQA/MQA: k, v              (B, S, n_kv_heads, head_dim) each
    MLA:         c_kv, k_rope      (B, S, C) and (B, S, R)      -> C + R numbers per token
    linear:      a running state   (B, H, D, D) and (B, H, D), independent of S
This class only stores. Sequence tensors grow along dim 1 into preallocated storage (doubling,
so appending is amortised O(1)); state tensors are replaced whole.

A batch of prompts of different lengths is LEFT-padded (components/generation.py): row b starts
with pad[b] filler columns, so that every row's last token sits in the last column and one new
token per row is one new column. The cache then also says, per row, which columns are padding:
`positions` gives each new token its position within its own row (for RoPE), and `attention_mask`
hides the padding from every query. Without padding (`pad` is None) both are None and attention
takes its plain causal path.

Shapes: B batch, T new tokens, S cached + new tokens.
"""

from __future__ import annotations

import torch


class LayerCache:
    """Growing storage for one layer. `length` = tokens seen so far = position of the next token."""

    def __init__(self, pad: torch.Tensor | None = None) -> None:
        self.length = 0
        self.pad = pad                             # (B,) long: leading padding columns of each row, or None
        self._seq: dict[str, torch.Tensor] = {}    # name -> (B, capacity, ...) storage
        self._state: dict[str, torch.Tensor] = {}  # name -> fixed-size state

    def positions(self, T: int) -> torch.Tensor | None:
        """(B, T) position of each of T new tokens within its own row (the columns after `length`);
        padding columns get 0 (their output is never used). None without padding: positions are
        then length, length+1, ... for every row."""
        if self.pad is None:
            return None
        columns = self.length + torch.arange(T, device=self.pad.device)                 # (T,)
        return (columns[None, :] - self.pad[:, None]).clamp(min=0)                       # (B, T)

    def attention_mask(self, T: int, S: int) -> torch.Tensor | None:
        """(B, T, S) bool, True where query t may look at key s: causal, and never at a padding column.

        A padding query has no real key to its left; it may see itself, so that its softmax is never
        over an empty set (0/0 = NaN would spread through the next layer's padding columns). None
        without padding.
        """
        if self.pad is None:
            return None
        device = self.pad.device
        query_col = S - T + torch.arange(T, device=device)                               # (T,)
        key_col = torch.arange(S, device=device)                                         # (S,)
        causal = key_col[None, :] <= query_col[:, None]                                  # (T, S)
        real_key = key_col[None, :] >= self.pad[:, None]                                 # (B, S)
        own = key_col[None, :] == query_col[:, None]                                     # (T, S)
        return (causal[None] & real_key[:, None, :]) | own[None]                         # (B, T, S)

    def append(self, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Store the T new tokens of each named tensor (B, T, ...); return views (B, S, ...).

        All tensors of one call must have the same T; `length` advances by T once per call.
        """
        steps = {t.shape[1] for t in new.values()}
        if len(steps) != 1:
            raise ValueError(f"append() got tensors with different token counts {sorted(steps)}")
        (step,) = steps
        if self._state:
            raise ValueError("this cache holds a running state; it cannot also store sequences")
        end = self.length + step
        views = {}
        for name, value in new.items():
            store = self._seq.get(name)
            if store is None or store.shape[1] < end:
                capacity = max(end, 2 * (store.shape[1] if store is not None else 0), 16)
                grown = value.new_empty(value.shape[0], capacity, *value.shape[2:])  # (B, cap, ...)
                if store is not None:
                    grown[:, : self.length] = store[:, : self.length]
                store = self._seq[name] = grown
            store[:, self.length:end] = value
            views[name] = store[:, :end]                                         # (B, S, ...)
        self.length = end
        return views

    def get_state(self, name: str) -> torch.Tensor | None:
        return self._state.get(name)

    def set_state(self, step: int, **state: torch.Tensor) -> None:
        """Replace the running state after `step` more tokens (linear attention)."""
        if self._seq:
            raise ValueError("this cache stores sequences; it cannot also hold a running state")
        self._state.update(state)
        self.length += step

    def tensors(self) -> dict[str, torch.Tensor]:
        """What is really held for the tokens seen: sequence views (B, S, ...) and states."""
        held = {name: store[:, : self.length] for name, store in self._seq.items()}
        held.update(self._state)
        return held

    def nbytes(self) -> int:
        """Bytes of the cached values for the tokens seen (not counting spare capacity)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def values_per_token(self) -> int:
        """Numbers stored per token per batch row (sequence tensors only; 0 for a running state)."""
        return sum(store[0, 0].numel() for store in self._seq.values())
