"""The expert: a SwiGLU feed-forward network (DeepSeekMoE, V2 Sec. 2.2; V3 Sec. 2.1.2).

Every DeepSeek FFN -- the dense FFN of the first layers, each routed expert and each shared
expert -- is the same gated MLP without biases (Shazeer 2020, "GLU variants"):

    FFN(x) = W_down( SiLU(W_gate x) * (W_up x) ),     SiLU(z) = z * sigmoid(z)

DeepSeek's inference code calls the three matrices w1 (gate), w3 (up) and w2 (down);
Hugging Face calls them gate_proj, up_proj, down_proj and, for routed experts, stores
[w1; w3] fused as one `gate_up_proj[e]` of shape (2I, D) (docs/maths.md §2.2, §4.2).
We keep them as three named Linears: one extra matmul launch, but the equation reads off the code.

"Fine-grained experts" (DeepSeekMoE) simply means many experts with a small hidden width I.

Shapes: N tokens (any leading dims), D model width, I expert hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    """SwiGLU FFN `w_down(silu(w_gate x) * w_up x)`, all three projections bias-free.

    Args:
        d_model: D, width of the residual stream (input and output).
        hidden_dim: I, hidden width (DeepSeek: `moe_inter_dim` for experts, `inter_dim` for dense FFNs).
    """

    def __init__(self, d_model: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden_dim, bias=False)   # w1: the gate branch, goes through SiLU
        self.w_up = nn.Linear(d_model, hidden_dim, bias=False)     # w3: the linear "up" branch
        self.w_down = nn.Linear(hidden_dim, d_model, bias=False)   # w2: back to the residual width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1) two parallel projections up to the hidden width, one of them gated by SiLU
        hidden = F.silu(self.w_gate(x)) * self.w_up(x)            # (..., I)
        # 2) project back down to the model width
        return self.w_down(hidden)                                 # (..., D)
