"""The whole model: token embedding -> N pre-norm blocks -> RMSNorm -> output head.

    logits = W_out RMSNorm(Block_N(... Block_1(Emb(idx))))
    loss   = CE(logits, targets) + sum over MoE layers of the weighted balance losses
             (+ lambda * L_MTP when multi-token prediction is on, V3 §2.2)

The balance losses are regularisers, so `ForwardStats.ce` reports the cross-entropy alone (it can
never be negative, and it is what perplexity is computed from).

The head and the cross-entropy are the textbook `F.cross_entropy(head(x), targets)`; a caller may pass
`head_loss`, a function that computes the same two in its own way (the trainer passes a fused one for
fp32 training on CPU, where it was measured to be faster: training/fast_head.py).

Generation keeps one `LayerCache` per layer: MLA stores only c_KV and the RoPE key per token
(`kv_latent_dim + rope_head_dim` numbers per layer), which is what makes DeepSeek cheap to serve.

Shapes: B batch, T tokens (new tokens when decoding), D d_model, V vocab, E routed experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from components import generation
from components.beam_search import beam_search as run_beam_search
from components.config import ModelConfig
from components.kv_cache import LayerCache
from components.moe import MoEStats
from components.multi_token_prediction import MultiTokenPrediction
from components.router import Router
from components.transformer_block import TransformerBlock


@dataclass
class ForwardStats:
    """What a forward measured besides the logits and the total loss (losses detached)."""
    ce: torch.Tensor | None = None         # () next-token cross-entropy alone (perplexity = exp(ce))
    mtp_loss: torch.Tensor | None = None   # () L_MTP of V3 eq 25, before the weight lambda
    balance_loss: torch.Tensor | None = None                     # () sum of every weighted balance loss
    balance_losses: dict[str, torch.Tensor] = field(default_factory=dict)   # name -> summed over layers
    moe: list[MoEStats] = field(default_factory=list)   # per MoE layer, main layers then MTP (= routers())


class DeepSeekModel(nn.Module):
    """A small DeepSeek-V2/V3-style language model built from a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight        # one (V, D) matrix read in and written out
        self.mtp = MultiTokenPrediction(cfg) if cfg.mtp_depth > 0 else None
        self.apply(self._init_weights)
        # GPT-2 style: shrink the projections that write into the residual stream so that the
        # residual's variance does not grow with depth (2 writes per block).
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("w_o.weight", "w_down.weight", "out_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # --- helpers used by the trainer, generation and notebooks ------------------------------
    def new_caches(self, pad: torch.Tensor | None = None) -> list[LayerCache]:
        """One empty cache per layer, for incremental decoding; `pad` (B,): leading padding columns of
        each row of a left-padded batch of prompts (components/kv_cache.py)."""
        return [LayerCache(pad) for _ in self.blocks]

    def routers(self) -> list[Router]:
        """Every MoE router (main layers first, then MTP): the trainer updates their biases."""
        return [m for m in self.modules() if isinstance(m, Router)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[LayerCache] | None = None, absorb: bool = False, head_loss=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None, ForwardStats).

        With `caches`, idx holds only the new tokens; positions continue from the cache length.
        `head_loss(hidden (N, D), head weight (V, D), targets (N,)) -> (mean CE, logits (N, V))`, if given,
        replaces step 3-4's plain head + cross-entropy (same values; used only with targets).
        """
        B, T = idx.shape
        start = caches[0].length if caches else 0
        if start + T > self.cfg.context_length:
            raise ValueError(f"{start + T} tokens exceed context_length={self.cfg.context_length}; "
                             "crop the input to the last context_length tokens")
        # 1) token embedding (no position embedding: RoPE inside attention carries positions)
        x = self.dropout(self.embed(idx))                                           # (B, T, D)
        # 2) the blocks, collecting each MoE layer's routing statistics
        moe_stats = []
        for i, block in enumerate(self.blocks):
            x, layer_stats = block(x, cache=caches[i] if caches else None, absorb=absorb)   # (B, T, D)
            if layer_stats is not None:
                moe_stats.append(layer_stats)
        hidden = x
        # 3) final norm and output head; 4) cross-entropy in fp32 (logits may be bf16 under autocast)
        x = self.norm(x)                                                            # (B, T, D)
        loss = None
        if targets is not None and head_loss is not None:
            ce, logits = head_loss(x.flatten(0, 1), self.head.weight, targets.flatten())
            logits = logits.view(B, T, -1)                                          # (B, T, V)
        else:
            logits = self.head(x)                                                   # (B, T, V)
            if targets is not None:
                ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        stats = ForwardStats()
        if targets is not None:
            loss = ce
            stats.ce = ce.detach()
            if self.mtp is not None:
                mtp_loss, mtp_stats = self.mtp(hidden, idx, targets, self.embed, self.head)
                loss = loss + self.cfg.mtp_loss_weight * mtp_loss
                stats.mtp_loss = mtp_loss.detach()
                moe_stats = moe_stats + mtp_stats
        # 5) balance losses, summed over MoE layers (each already weighted by its coefficient)
        balance = {}
        for layer in moe_stats:
            for name, value in layer.losses.items():
                balance[name] = balance.get(name, 0.0) + value
        balance_loss = sum(balance.values()) if balance else logits.new_zeros((), dtype=torch.float32)
        if loss is not None and balance:   # not `+ zeros`: torch.compile (2.13) then lost the loss's grad_fn
            loss = loss + balance_loss
        stats.balance_loss = balance_loss.detach()
        stats.balance_losses = {name: value.detach() for name, value in balance.items()}
        stats.moe = moe_stats
        return logits, loss, stats

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Autoregressive sampling with the KV cache; see `components.generation.generate`."""
        return generation.generate(self, idx, max_new_tokens, **sampling)

    @torch.no_grad()
    def beam_search(self, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
        """Deterministic beam search for one prompt; see `components.beam_search.beam_search`."""
        return run_beam_search(self, idx, max_new_tokens, **options)
