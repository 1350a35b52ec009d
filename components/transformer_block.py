"""One pre-norm Transformer block: attention, then a feed-forward network, each on a residual.

    x = x + Attn(RMSNorm(x))          attention: MLA or a baseline (MHA / GQA / MQA / linear)
    x = x + FFN(RMSNorm(x))           FFN: DeepSeekMoE, or a dense SwiGLU in the first layers

DeepSeek-V3 inference `Block.forward` (docs/maths.md §2.1) and HF `DeepseekV3DecoderLayer`. The
first `n_dense_layers` blocks use a dense FFN (V3: 3, V2: 1): early layers see token-level features
where routing helps least, and a dense start stabilises training.

Shapes: B batch, T new tokens, D d_model.
"""

from __future__ import annotations

import torch
from torch import nn

from components.attention import CausalSelfAttention, LinearAttention
from components.config import ModelConfig
from components.expert import Expert
from components.kv_cache import LayerCache
from components.moe import MoE, MoEStats
from components.multi_head_latent_attention import MultiHeadLatentAttention


def build_attention(cfg: ModelConfig) -> nn.Module:
    """The attention kind the config names, with its sizes unpacked from the config."""
    cfg = cfg.resolved()                            # the head sizes left None, filled in
    if cfg.attention == "mla":
        return MultiHeadLatentAttention(
            cfg.d_model, cfg.n_heads, cfg.kv_latent_dim, cfg.rope_head_dim, cfg.qk_nope_head_dim, cfg.v_head_dim,
            q_latent_dim=cfg.q_latent_dim, max_positions=cfg.context_length, rope_theta=cfg.rope_theta,
            norm_eps=cfg.norm_eps, dropout=cfg.dropout)
    if cfg.attention == "linear":
        return LinearAttention(cfg.d_model, cfg.n_heads, max_positions=cfg.context_length, dropout=cfg.dropout)
    # mha / gqa / mqa differ only in how many key/value heads they keep
    return CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, max_positions=cfg.context_length,
                               rope_theta=cfg.rope_theta, dropout=cfg.dropout)


def build_moe(cfg: ModelConfig) -> MoE:
    return MoE(
        cfg.d_model, cfg.expert_hidden_dim, cfg.n_routed_experts, cfg.n_shared_experts, cfg.top_k,
        capacity_factor=cfg.capacity_factor, score=cfg.router_score, route_scale=cfg.route_scale,
        n_groups=cfg.n_expert_groups, topk_groups=cfg.topk_groups, noise_std=cfg.router_noise_std,
        use_bias=cfg.uses_bias, bias_update_rate=cfg.bias_update_rate, balance_coefs=cfg.balance_coefs)


class TransformerBlock(nn.Module):
    """Pre-norm block; layer `layer_idx` decides dense vs MoE feed-forward (cfg.is_moe_layer)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = build_attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.ffn = build_moe(cfg) if self.is_moe else Expert(cfg.d_model, cfg.resolved().dense_hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None,
                absorb: bool = False) -> tuple[torch.Tensor, MoEStats | None]:
        # 1) attention on the normalised input; the cache (if any) is extended in place
        x = x + self.dropout(self.attn(self.attn_norm(x), cache=cache, absorb=absorb))   # (B, T, D)
        # 2) feed-forward: MoE also returns its routing statistics (loads, balance losses)
        h = self.ffn_norm(x)
        if self.is_moe:
            ffn_out, stats = self.ffn(h)                                                 # (B, T, D)
        else:
            ffn_out, stats = self.ffn(h), None
        return x + self.dropout(ffn_out), stats
