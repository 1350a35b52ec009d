"""Baseline causal attentions to compare MLA with: MHA, GQA, MQA (one class) and linear attention.

Softmax attention (Vaswani et al. 2017), per head h, with RoPE on the whole head:
    q_t = RoPE(W_Q h_t),  k_s = RoPE(W_K h_s),  v_s = W_V h_s
    o_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(D)) v_s,       u_t = W_O [o_t^1; ...; o_t^H]
The decoding cache keeps every past k and v: 2 * n_kv_heads * D numbers per token per layer.
GQA (Ainslie et al. 2023) shares each k/v head between H / n_kv_heads query heads, MQA (Shazeer
2019) shares one k/v head between all of them: the cache shrinks by the same factor (V2 Table 1).

Causal linear attention (Katharopoulos et al. 2020) replaces exp(q . k) by phi(q) . phi(k) with
phi(x) = elu(x) + 1 > 0, so the sum over the past folds into a running state of fixed size:
    S_t = S_{t-1} + phi(k_t) v_t^T   (D x D),     z_t = z_{t-1} + phi(k_t)   (D)
    o_t = S_t^T phi(q_t) / (z_t . phi(q_t))
The "cache" is (S, z), whatever the context length. It has no positional encoding: the causal
sum itself tells tokens apart by order (as in the paper).

Shapes: B batch, T new tokens, S cached + new tokens, H query heads, G kv heads (n_kv_heads),
D head dim (d_model / H), L tokens of one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.kv_cache import LayerCache
from components.rope import RotaryEmbedding


def causal_mask(T: int, S: int, device: torch.device | None = None) -> torch.Tensor | None:
    """(T, S) bool, True where the query may look: the T new tokens are the last T of the S keys.

    Query i sits at position S - T + i and sees keys j <= S - T + i (a prefill on a non-empty cache
    needs this offset). None when nothing is hidden (a single new token sees every cached key).
    """
    if T == 1:
        return None
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


class CausalSelfAttention(nn.Module):
    """MHA (n_kv_heads == n_heads), GQA (1 < n_kv_heads < n_heads) or MQA (n_kv_heads == 1).

    Args:
        d_model: d, the model width; head size D = d_model / n_heads (must be even for RoPE).
        n_heads: H query heads.
        n_kv_heads: G key/value heads (must divide H); the cache holds k and v for these only.
        max_positions: length of the RoPE table, the longest sequence the module accepts.
        rope_theta: RoPE base.
        dropout: on the attention probabilities and on the output, in training mode only.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, max_positions: int = 2048,
                 rope_theta: float = 10000.0, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"need n_heads={n_heads} | d_model={d_model} and n_kv_heads={n_kv_heads} | n_heads")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.w_k = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.w_v = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.w_o = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, max_positions, rope_theta)
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, absorb: bool = False) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). `absorb` is ignored (only MLA has an absorbed path); it is
        accepted so that a block calls every attention the same way."""
        B, T, _ = x.shape
        H, G, D = self.n_heads, self.n_kv_heads, self.head_dim
        start = cache.length if cache is not None else 0
        positions = cache.positions(T) if cache is not None else None   # (B, T) in a left-padded batch
        # 1) project and rotate; the new tokens sit at positions start .. start+T-1 (or `positions`)
        q = self.rope(self.w_q(x).view(B, T, H, D), start, positions)   # (B, T, H, D)
        k = self.rope(self.w_k(x).view(B, T, G, D), start, positions)   # (B, T, G, D)
        v = self.w_v(x).view(B, T, G, D)                            # (B, T, G, D)
        # 2) the cache keeps k and v of every token seen: 2*G*D numbers per token
        if cache is not None:
            held = cache.append(k=k, v=v)
            k, v = held["k"], held["v"]                             # (B, S, G, D) each
        S = k.shape[1]
        # 3) GQA/MQA: query head h reads kv head h // (H/G) (HF `repeat_kv` order)
        if G != H:
            k = k.repeat_interleave(H // G, dim=2)                  # (B, S, H, D)
            v = v.repeat_interleave(H // G, dim=2)                  # (B, S, H, D)
        # 4) softmax attention; is_causal only when the T queries are all the keys (no past);
        #    a left-padded batch brings its own (B, T, S) mask that also hides the padding
        pad_mask = cache.attention_mask(T, S) if cache is not None else None
        mask = pad_mask[:, None] if pad_mask is not None else causal_mask(T, S, x.device) if S > T else None
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # (B, H, T|S, D)
            attn_mask=mask, is_causal=mask is None and S == T and T > 1,
            dropout_p=self.dropout if self.training else 0.0)      # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, H * D)              # (B, T, H*D)
        return self.out_dropout(self.w_o(out))                      # (B, T, d)


class LinearAttention(nn.Module):
    """Causal linear attention with phi = elu + 1; its cache is the running state (S, z).

    Args:
        d_model: d; head size D = d_model / n_heads.
        n_heads: H heads, each with its own D x D state.
        max_positions: the longest sequence accepted (nothing is tabulated; kept for a common
            signature and the same "too long" error as the other attentions).
        dropout: on the output, in training mode only.
    """

    chunk_size = 64   # tokens processed together: quadratic inside a chunk, state across chunks

    def __init__(self, d_model: int, n_heads: int, max_positions: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim, self.max_positions = n_heads, d_model // n_heads, max_positions
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, d_model, bias=False)
        self.w_v = nn.Linear(d_model, d_model, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, absorb: bool = False) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); `absorb` is ignored (see CausalSelfAttention.forward)."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        start = cache.length if cache is not None else 0
        if start + T > self.max_positions:
            raise ValueError(f"position {start + T} exceeds max_positions={self.max_positions}")
        # 1) feature maps, in fp32 so that the running sums stay accurate in bf16 models
        phi_q = F.elu(self.w_q(x).view(B, T, H, D).transpose(1, 2).float()) + 1   # (B, H, T, D)
        phi_k = F.elu(self.w_k(x).view(B, T, H, D).transpose(1, 2).float()) + 1   # (B, H, T, D)
        v = self.w_v(x).view(B, T, H, D).transpose(1, 2).float()                  # (B, H, T, D)
        pad_query = None
        if cache is not None and cache.pad is not None:   # a left-padded batch: padding adds nothing
            columns = start + torch.arange(T, device=x.device)                    # (T,)
            pad_query = (columns[None, :] < cache.pad[:, None])[:, None, :, None]  # (B, 1, T, 1)
            phi_k, v = phi_k.masked_fill(pad_query, 0.0), v.masked_fill(pad_query, 0.0)
        # 2) the state carried in from earlier tokens (zero for a fresh sequence)
        state = cache.get_state("s") if cache is not None else None
        if state is None:
            state = phi_k.new_zeros(B, H, D, D)                                   # (B, H, D, D)
            z = phi_k.new_zeros(B, H, D)                                          # (B, H, D)
        else:
            z = cache.get_state("z")                                              # (B, H, D)
        # 3) chunk by chunk: the past through the state, the chunk itself through a masked
        #    L x L product (the same sums as the recurrence, in a few matmuls)
        outputs = []
        for c in range(0, T, self.chunk_size):
            q_c, k_c, v_c = (t[:, :, c:c + self.chunk_size] for t in (phi_q, phi_k, v))  # (B, H, L, D)
            scores = (q_c @ k_c.transpose(-1, -2)).tril()                         # (B, H, L, L)
            numerator = q_c @ state + scores @ v_c                                # (B, H, L, D)
            denominator = q_c @ z.unsqueeze(-1) + scores.sum(-1, keepdim=True)   # (B, H, L, 1)
            outputs.append(numerator / denominator)
            state = state + k_c.transpose(-1, -2) @ v_c                           # (B, H, D, D)
            z = z + k_c.sum(dim=2)                                                # (B, H, D)
        if cache is not None:
            cache.set_state(T, s=state, z=z)
        out = torch.cat(outputs, dim=2)                                           # (B, H, T, D)
        if pad_query is not None:                 # a padding query saw only zeros: 0/0, never used
            out = out.masked_fill(pad_query, 0.0)
        out = out.type_as(x)
        out = out.transpose(1, 2).reshape(B, T, H * D)                            # (B, T, d)
        return self.out_dropout(self.w_o(out))                                    # (B, T, d)
