"""The whole model: token embedding -> N pre-norm blocks -> RMSNorm -> output head.

    logits = W_out RMSNorm(Block_N(... Block_1(Emb(idx))))
    loss   = CE(logits, targets) + sum over MoE layers of the weighted balance losses
             (+ lambda * L_MTP when multi-token prediction is on, V3 §2.2)

The balance losses are regularisers, so `aux['ce']` reports the cross-entropy alone (it can
never be negative, and it is what perplexity is computed from).

Training in fp32 on CPU computes head and cross-entropy in one autograd node (`head_cross_entropy`):
the same maths, one elementwise pass over the (B*T, V) logits instead of several, and logits rows
padded to a multiple of 16 floats in memory (see there why). Head and loss are about half of a
SMALL training step.

Generation keeps one `LayerCache` per layer: MLA stores only c_KV and the RoPE key per token
(`kv_latent_dim + rope_head_dim` numbers per layer), which is what makes DeepSeek cheap to serve.

Shapes: B batch, T tokens (new tokens when decoding), D d_model, V vocab, E routed experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from components import generation
from components.beam_search import beam_search as run_beam_search
from components.config import ModelConfig
from components.kv_cache import LayerCache
from components.multi_token_prediction import MultiTokenPrediction
from components.router import Router
from components.transformer_block import TransformerBlock

LOGITS_ROW_ALIGN = 16       # floats: 64 bytes, one cache line / one AVX-512 register
UNDERFLOW_PROB = 1e-30      # below this, -log p is recomputed from the logits (fp32 normals end at 1.2e-38)


class HeadCrossEntropy(torch.autograd.Function):
    """logits = h W^T and CE = mean_n( logsumexp(logits_n) - logits_n[y_n] ), with the textbook gradient

        p = softmax(logits),   dCE/dlogits = (p - onehot(y)) / N,   dh = (p W - W[y]) / N,
        dW = (p^T h - scatter_y(h)) / N

    Same values as `F.cross_entropy(F.linear(h, W), y)`, written out for speed on CPU:
    1) each logits row starts on a 64-byte boundary: the (N, V) result is a view into a (N, V_pad)
       buffer. MKL's matmul into rows of the odd width 50257 ran ~20% slower than into aligned rows
       (1024 x 256 @ 256 x 50257 on one core: 298 vs 247 ms; the forward matmul is 1/3 of the head's
       FLOPs). The V_pad - V pad columns hold -inf, so their probability is exactly 0.
    2) ONE pass of elementwise work over the (N, V) logits in all: the forward keeps the softmax p
       (not the log-probabilities), the loss reads -log p at the N targets, and the backward feeds p
       straight into the two matmuls; the one-hot part of the gradient is subtracted from the small
       (N, D) and (V, D) results (a gather and a scatter of N rows), and the 1/N mean is applied to
       them too. Compared with log_softmax forward + softmax backward: ~65 ms less of an ~860 ms
       head at SMALL sizes on a 2-core CPU. The softmax kernel, unlike torch.exp, stays fast on
       results that underflow (a memorised batch has many; exp took 550 vs 44 ms on such values).
    3) -log p is exact while p is a normal float; a target whose p underflowed (its logit ~87+ below
       the row's log-sum-exp) gets logsumexp(row) - logit from the logits instead, for that row only.
    Shapes: N tokens, D model width, V vocab, V_pad = V rounded up to LOGITS_ROW_ALIGN.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        N, V = hidden.shape[0], weight.shape[0]
        V_pad = -(-V // LOGITS_ROW_ALIGN) * LOGITS_ROW_ALIGN
        padded = hidden.new_empty(N, V_pad)                                      # (N, V_pad)
        logits = padded[:, :V]                                                   # (N, V) aligned rows
        torch.mm(hidden, weight.t(), out=logits)                                 # logits = h W^T
        padded[:, V:] = float("-inf")
        probs = torch.softmax(padded, dim=-1)                                    # (N, V_pad), pads 0
        rows = torch.arange(N, device=hidden.device)
        target_probs = probs[rows, targets]                                      # (N,)
        nll = -torch.log(target_probs)                                           # (N,) -log p_y
        underflowed = target_probs < UNDERFLOW_PROB                              # (N,) rare
        if bool(underflowed.any()):
            lost = underflowed.nonzero()[:, 0]                                   # (n,)
            nll[lost] = torch.logsumexp(padded[lost], dim=-1) - logits[lost, targets[lost]]
        ctx.save_for_backward(hidden, weight, targets, probs)
        ctx.set_materialize_grads(False)
        return nll.mean(), logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        hidden, weight, targets, probs = ctx.saved_tensors
        N, V = hidden.shape[0], weight.shape[0]
        if grad_logits is not None:           # the logits were used beyond the loss: one dense gradient
            grad = grad_logits.clone()                                           # (N, V)
            if grad_loss is not None:
                scale = grad_loss / N
                grad += probs[:, :V] * scale
                grad[torch.arange(N, device=grad.device), targets] -= scale      # (p - onehot(y)) / N
            return grad @ weight, grad.t() @ hidden, None
        probs = probs[:, :V]                                                     # (N, V), pads dropped
        grad_hidden = (probs @ weight).sub_(weight[targets])                     # (N, D) = (p - onehot) W
        grad_weight = (probs.t() @ hidden).index_add_(0, targets, hidden, alpha=-1.0)   # (V, D)
        scale = grad_loss / N                                                    # the mean's 1/N
        return grad_hidden * scale, grad_weight * scale, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (N, D), weight (V, D), targets (N,) in [0, V) -> (mean CE (), logits (N, V)).

    The logits are a view with padded rows (row stride V_pad): `.view(-1, V)` and slicing work,
    flattening everything needs `.contiguous()` first.
    """
    return HeadCrossEntropy.apply(hidden, weight, targets)


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
    def new_caches(self) -> list[LayerCache]:
        """One empty cache per layer, for incremental decoding."""
        return [LayerCache() for _ in self.blocks]

    def routers(self) -> list[Router]:
        """Every MoE router (main layers first, then MTP): the trainer updates their biases."""
        return [m for m in self.modules() if isinstance(m, Router)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[LayerCache] | None = None, absorb: bool = False):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None, aux dict).

        With `caches`, idx holds only the new tokens; positions continue from the cache length.
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
            x, stats = block(x, cache=caches[i] if caches else None, absorb=absorb)   # (B, T, D)
            if stats is not None:
                moe_stats.append(stats)
        hidden = x
        # 3) final norm and output head; 4) cross-entropy in fp32 (logits may be bf16 under autocast)
        x = self.norm(x)                                                            # (B, T, D)
        aux = {"ce": None, "mtp_loss": None}
        loss = None
        if targets is not None and self._fuse_head_and_loss(x, targets):
            ce, logits = head_cross_entropy(x.flatten(0, 1), self.head.weight, targets.flatten())
            logits = logits.view(B, T, -1)                                          # (B, T, V)
        else:
            logits = self.head(x)                                                   # (B, T, V)
            if targets is not None:
                ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        if targets is not None:
            loss = ce
            aux["ce"] = ce.detach()
            if self.mtp is not None:
                mtp_loss, mtp_stats = self.mtp(hidden, idx, targets, self.embed, self.head)
                loss = loss + self.cfg.mtp_loss_weight * mtp_loss
                aux["mtp_loss"] = mtp_loss.detach()
                moe_stats = moe_stats + mtp_stats
        # 5) balance losses, summed over MoE layers (each already weighted by its coefficient)
        balance = {}
        for stats in moe_stats:
            for name, value in stats.losses.items():
                balance[name] = balance.get(name, 0.0) + value
        balance_loss = sum(balance.values()) if balance else logits.new_zeros((), dtype=torch.float32)
        if loss is not None:
            loss = loss + balance_loss
        aux["balance_loss"] = balance_loss.detach() if torch.is_tensor(balance_loss) else balance_loss
        aux["balance_losses"] = {name: value.detach() for name, value in balance.items()}
        aux["tokens_per_expert"] = [s.tokens_per_expert for s in moe_stats]
        aux["dropped_tokens"] = [s.dropped_tokens for s in moe_stats]
        return logits, loss, aux

    def _fuse_head_and_loss(self, x: torch.Tensor, targets: torch.Tensor) -> bool:
        """`head_cross_entropy` covers fp32 on CPU (where its speed-up was measured), without autocast,
        and plain class targets (no ignore_index); anything else takes the plain head + F.cross_entropy."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and self.head.weight.dtype == torch.float32
                and not torch.is_autocast_enabled(x.device.type) and targets.numel() > 0
                and int(targets.min()) >= 0)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Autoregressive sampling with the KV cache; see `components.generation.generate`."""
        return generation.generate(self, idx, max_new_tokens, **sampling)

    @torch.no_grad()
    def beam_search(self, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
        """Deterministic beam search for one prompt; see `components.beam_search.beam_search`."""
        return run_beam_search(self, idx, max_new_tokens, **options)
