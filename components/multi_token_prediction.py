"""Multi-token prediction (MTP), DeepSeek-V3 §2.2: extra modules that predict further ahead.

Module k (k = 1..D) takes the previous depth's hidden state at position i and the embedding of
token t_{i+k}, and predicts token t_{i+k+1}, keeping the full causal chain (V3 eqs 21-25):
    h'_i^k = M_k [RMSNorm(h_i^{k-1}) ; RMSNorm(Emb(t_{i+k}))]        M_k: (2D -> D)
    h^k    = TRM_k(h'^k)                                              one Transformer block
    P^k    = OutHead(h^k)                                             shared embedding and head
    L^k    = -(1/T) * sum_{i < T-k} log P^k_i[t_{i+k+1}]                (eq 24)
    L_MTP  = (lambda / D) * sum_k L^k                                    (eq 25)
Only T-k positions of a T-token window have a target k+1 tokens ahead, but eq 24 divides by T, so
a deeper module's loss is not scaled up for having fewer targets.
It only densifies the training signal; inference drops it (or uses it for speculative decoding).

Shapes: B batch, T tokens, D d_model, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.config import ModelConfig
from components.transformer_block import TransformerBlock


class MultiTokenPrediction(nn.Module):
    """D sequential MTP modules sharing the main model's embedding and output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.depth = cfg.mtp_depth
        self.hidden_norms = nn.ModuleList(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(self.depth))
        self.embed_norms = nn.ModuleList(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(self.depth))
        self.projections = nn.ModuleList(nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
                                         for _ in range(self.depth))
        # each module's block is built like the last main layer (MoE when the model uses MoE)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, cfg.n_layers) for _ in range(self.depth))
        self.out_norms = nn.ModuleList(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(self.depth))

    def forward(self, hidden: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor,
                embed: nn.Embedding, head: nn.Linear) -> tuple[torch.Tensor, list]:
        """(1/D) sum_k L^k (eq 25 before lambda) and the MoE stats of the D modules' blocks."""
        losses, all_stats = [], []
        T = idx.shape[1]
        for k in range(1, self.depth + 1):
            if T - k < 1:
                break
            m = k - 1
            # 1) combine h^{k-1}_i with the embedding of t_{i+k}, for i < T - k
            h_prev = self.hidden_norms[m](hidden[:, : T - k])                   # (B, T-k, D)
            e_next = self.embed_norms[m](embed(idx[:, k:]))                     # (B, T-k, D)
            h = self.projections[m](torch.cat([h_prev, e_next], dim=-1))       # (B, T-k, 2D) -> (B, T-k, D)
            # 2) one causal block, then the shared head predicts t_{i+k+1} = targets[:, i+k]
            hidden, stats = self.blocks[m](h)                                   # (B, T-k, D)
            logits = head(self.out_norms[m](hidden))                            # (B, T-k, V)
            ce_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, k:].flatten(), reduction="sum")
            losses.append(ce_sum / (idx.shape[0] * T))                         # eq 24: 1/T per sequence
            if stats is not None:
                all_stats.append(stats)
        if not losses:
            return hidden.new_zeros(()), all_stats
        return torch.stack(losses).sum() / self.depth, all_stats              # eq 25 (before lambda)
