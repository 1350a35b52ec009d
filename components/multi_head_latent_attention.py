"""Multi-Head Latent Attention (MLA), DeepSeek-V2 §2.1 (eqs 9-19), as in DeepSeek-V3.

Cache one small latent per token instead of per-head keys and values. For token t with input h_t:
    c_kv_t   = RMSNorm(W_DKV h_t)                 (9)   C numbers: this is what the cache keeps
    k_nope_t = W_UK c_kv_t,  v_t = W_UV c_kv_t    (10-11) decompressed per head, never cached
    c_q_t    = RMSNorm(W_DQ h_t)                  (12)  query latent (skipped if q_latent_dim is None:
    q_nope_t = W_UQ c_q_t                         (13)   then q_nope = W_Q h_t, q_rope from h_t)
    q_rope_t = RoPE(W_QR c_q_t)                   (14)  per head
    k_rope_t = RoPE(W_KR h_t)                     (15)  ONE rope key shared by all heads, also cached
    q_t = [q_nope_t; q_rope_t],  k_t = [k_nope_t; k_rope_t]      (16-17) concatenated per head
    o_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(D + R)) v_s    (18)
    u_t = W_O [o_t^1; ...; o_t^H]                 (19)
Cache per token per layer: C + R numbers (MHA: 2 * H * D): V2 Table 1, docs/maths.md §1.5/§1.7.

Absorption (the inference trick). Per head, q_nope . (W_UK c) = (W_UK^T q_nope) . c, so W_UK folds
into the query and the scores are computed against the cached latents directly; likewise
sum_s p_s (W_UV c_s) = W_UV (sum_s p_s c_s), so attention averages latents and W_UV comes after.
Decoding then never materialises per-head keys or values for the S cached tokens.

Why RoPE is decoupled: RoPE rotates by a position-dependent matrix R_t, and
(R_t q) . (R_s W_UK c_s) = q . (R_t^T R_s W_UK) c_s puts a matrix that depends on s between q and
c_s, so W_UK could no longer be folded into the query once for all s. Hence the position goes into
a separate small part: q_rope (per head) and k_rope (shared, cached after rotation), whose dot
product is added to the position-free latent score.

Shapes: B batch, T new tokens, S cached + new tokens, H heads, C kv latent dim (kv_lora_rank),
Q query latent dim (q_lora_rank), D q/k head dim without RoPE (qk_nope_head_dim), R rope head dim,
V value head dim, d model width. einsum letters are the same, in lower case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.attention import causal_mask
from components.kv_cache import LayerCache
from components.rope import RotaryEmbedding


class MultiHeadLatentAttention(nn.Module):
    """Causal attention over a compressed KV cache (naive and absorbed paths, same output).

    Args:
        d_model: d, the model width.
        n_heads: H.
        kv_latent_dim: C, the width of the cached latent c_kv (DeepSeek: kv_lora_rank).
        rope_head_dim: R, the decoupled RoPE part of each query head and of the shared key.
        qk_nope_head_dim: D, the position-free part of each query/key head.
        v_head_dim: V, the size of each value head (may differ from D).
        q_latent_dim: Q, the query latent (q_lora_rank); None = no query compression (V2-Lite).
        max_positions: length of the RoPE table, the longest sequence the module accepts.
        rope_theta: RoPE base.
        norm_eps: eps of the two RMSNorms (on c_q and c_kv).
        dropout: on the attention probabilities and on the output, in training mode only.
    """

    def __init__(self, d_model: int, n_heads: int, kv_latent_dim: int, rope_head_dim: int, qk_nope_head_dim: int,
                 v_head_dim: int, q_latent_dim: int | None = None, max_positions: int = 2048,
                 rope_theta: float = 10000.0, norm_eps: float = 1e-6, dropout: float = 0.0) -> None:
        super().__init__()
        H, C, R, D, V = n_heads, kv_latent_dim, rope_head_dim, qk_nope_head_dim, v_head_dim
        self.n_heads, self.kv_latent_dim, self.rope_head_dim, self.q_latent_dim = H, C, R, q_latent_dim
        self.qk_nope_head_dim, self.v_head_dim = D, V
        # Queries (eqs 12-14). DeepSeek fuses W_UQ and W_QR into one `wq_b` (per head [nope | rope]).
        if q_latent_dim is None:
            self.w_q = nn.Linear(d_model, H * D, bias=False)
            self.w_qr = nn.Linear(d_model, H * R, bias=False)
        else:
            self.w_dq = nn.Linear(d_model, q_latent_dim, bias=False)
            self.q_norm = nn.RMSNorm(q_latent_dim, eps=norm_eps)
            self.w_uq = nn.Linear(q_latent_dim, H * D, bias=False)
            self.w_qr = nn.Linear(q_latent_dim, H * R, bias=False)
        # Keys and values (eqs 9-11, 15). DeepSeek fuses w_dkv + w_kr into `wkv_a` and w_uk + w_uv
        # into `wkv_b` (per head [k_nope | v]); unfused here so that each matrix of the paper is visible.
        self.w_dkv = nn.Linear(d_model, C, bias=False)
        self.kv_norm = nn.RMSNorm(C, eps=norm_eps)
        self.w_kr = nn.Linear(d_model, R, bias=False)
        self.w_uk = nn.Linear(C, H * D, bias=False)
        self.w_uv = nn.Linear(C, H * V, bias=False)
        self.w_o = nn.Linear(H * V, d_model, bias=False)
        self.rope = RotaryEmbedding(R, max_positions, rope_theta)
        self.scale = (D + R) ** -0.5            # eq 18: sqrt of the full q/k head size, not of V
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, absorb: bool = False) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). With a cache, the T new tokens sit at positions cache.length ...;
        `absorb=True` runs the inference path (same output, no per-head keys or values)."""
        B, T, _ = x.shape
        H, D, R = self.n_heads, self.qk_nope_head_dim, self.rope_head_dim
        start = cache.length if cache is not None else 0
        positions = cache.positions(T) if cache is not None else None     # (B, T) in a left-padded batch
        # 1) queries: nope part and RoPE part per head (eqs 12-14)
        if self.q_latent_dim is None:
            c_q, w_q_nope = x, self.w_q                                   # no compression: from h
        else:
            c_q, w_q_nope = self.q_norm(self.w_dq(x)), self.w_uq          # (B, T, Q)
        q_nope = w_q_nope(c_q).view(B, T, H, D)                           # (B, T, H, D)
        q_rope = self.rope(self.w_qr(c_q).view(B, T, H, R), start, positions)   # (B, T, H, R)
        # 2) what the cache keeps: the normalised latent and the rotated shared key (eqs 9, 15)
        c_kv = self.kv_norm(self.w_dkv(x))                                # (B, T, C)
        k_rope = self.rope(self.w_kr(x), start, positions)                # (B, T, R)
        if cache is not None:
            held = cache.append(c_kv=c_kv, k_rope=k_rope)
            c_kv, k_rope = held["c_kv"], held["k_rope"]                   # (B, S, C), (B, S, R)
        # 3) attention over all S tokens, with either path
        attend = self._absorbed if absorb else self._naive
        pad_mask = cache.attention_mask(T, c_kv.shape[1]) if cache is not None else None   # (B, T, S) or None
        out = attend(q_nope, q_rope, c_kv, k_rope, pad_mask)              # (B, T, H*V)
        # 4) output projection (eq 19)
        return self.out_dropout(self.w_o(out))                            # (B, T, d)

    def _naive(self, q_nope, q_rope, c_kv, k_rope, pad_mask=None) -> torch.Tensor:
        """Training view: decompress keys and values of all S tokens, then ordinary attention."""
        (B, T, H, _), S = q_nope.shape, c_kv.shape[1]
        k_nope = self.w_uk(c_kv).view(B, S, H, self.qk_nope_head_dim)     # (B, S, H, D)  eq 10
        v = self.w_uv(c_kv).view(B, S, H, self.v_head_dim)                # (B, S, H, V)  eq 11
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(B, S, H, self.rope_head_dim)], dim=-1)  # (B, S, H, D+R)
        q = torch.cat([q_nope, q_rope], dim=-1)                           # (B, T, H, D+R)
        # SDPA's fused kernels keep the softmax in fp32 even for bf16/fp16 inputs
        mask = pad_mask[:, None] if pad_mask is not None else causal_mask(T, S, q.device) if S > T else None
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),        # (B, H, T|S, .)
            attn_mask=mask, is_causal=mask is None and S == T and T > 1,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale)  # (B, H, T, V)
        return out.transpose(1, 2).reshape(B, T, H * self.v_head_dim)    # (B, T, H*V)

    def _absorbed(self, q_nope, q_rope, c_kv, k_rope, pad_mask=None) -> torch.Tensor:
        """Inference view: W_UK folded into the query, W_UV applied after attending in latent space."""
        (B, T, H, D), S = q_nope.shape, c_kv.shape[1]
        w_uk = self.w_uk.weight.view(H, D, self.kv_latent_dim)           # (H, D, C)  a view, no copy
        w_uv = self.w_uv.weight.view(H, self.v_head_dim, self.kv_latent_dim)  # (H, V, C)
        # a) absorb W_UK: q_absorbed = W_UK_h^T q_nope, one C-vector per head
        q_absorbed = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)        # (B, T, H, C)
        # b) scores against the cache itself: latent part + shared RoPE part (eq 18 exactly)
        scores = (torch.einsum("bthc,bsc->bths", q_absorbed, c_kv)
                  + torch.einsum("bthr,bsr->bths", q_rope, k_rope)) * self.scale  # (B, T, H, S)
        if pad_mask is not None:                                          # (B, T, S): causal, no padding
            scores = scores.masked_fill(~pad_mask[:, :, None, :], float("-inf"))   # (B, T, H, S)
        elif (mask := causal_mask(T, S, scores.device)) is not None:      # (T, S)
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))  # (B, T, H, S)
        # c) softmax in fp32 (a no-op cast when already fp32)
        probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(c_kv)  # (B, T, H, S)
        probs = F.dropout(probs, self.dropout, self.training)
        # d) attend in latent space, then decompress once per head with W_UV
        out_latent = torch.einsum("bths,bsc->bthc", probs, c_kv)        # (B, T, H, C)
        out = torch.einsum("bthc,hvc->bthv", out_latent, w_uv)          # (B, T, H, V)
        return out.reshape(B, T, H * self.v_head_dim)                    # (B, T, H*V)
