"""Mixed precision in one place: which autocast dtype a device trains in, and the fp16 loss scaler.

The policy (`choose_precision(device, requested="auto")`):
    CPU, MPS               fp32 (no autocast): MKL/Accelerate are fastest in fp32 at our sizes, and the
                           fused head + cross-entropy of the CPU path is fp32-only
    CUDA, capability >= 8  bf16 autocast (Ampere and later have bf16 tensor cores): fp32's exponent
                           range, so no loss scaling
    CUDA, capability < 8   fp16 autocast + GradScaler (T4, V100: fp16 tensor cores, bf16 only emulated)
An explicit 'fp32' | 'bf16' | 'fp16' overrides. Refused, with a one-line ValueError: bf16 on a CUDA device
below capability 8.0 (torch would emulate it, several times slower than fp16; use fp16). CPU and MPS
accept bf16 and fp16 when asked (torch autocasts both there; on MPS bf16 needs macOS 14+).

Autocast keeps the weights, the gradients and the optimizer state in fp32 and runs the matmuls
(linear, matmul, einsum, bmm, SDPA) in the low-precision dtype (Micikevicius et al. 2018, "Mixed
Precision Training"). What stays fp32 in this model under bf16 AND fp16 autocast, and why:
    - router logits, scores, top-k and gate weights (components/router.py step 1): the logits run
      under `torch.autocast(enabled=False)` on fp32 casts. Selection is a discontinuous function of
      the scores: bf16's 8 mantissa bits would flip near-tied experts between steps.
    - the router bias (Router._apply keeps it fp32 through .to()/.half()): its gamma ~ 1e-3 sign steps
      would round away in bf16.
    - the residual stream: the embedding output is fp32 and each block adds its low-precision output
      to it (type promotion gives fp32), so every RMSNorm of the residual reads and writes fp32.
    - the MoE combine (components/moe.py step 5): expert outputs (low precision) times the fp32 gate
      weights promote to fp32 before the index_add_ into the fp32 token buffer.
    - RoPE (components/rope.py): the rotation is computed in fp32, then cast back to the input dtype.
    - the loss: F.cross_entropy(logits.float()) in components/deepseek_model.py and
      multi_token_prediction.py (autocast would run its log_softmax in fp32 anyway); the balance
      losses are computed from the fp32 router logits and scores.
    - attention's softmax: SDPA (naive MLA path, MHA/GQA/MQA) runs in bf16/fp16 but its fused kernels
      accumulate q.k and the softmax in fp32; the absorbed MLA path takes the softmax with
      dtype=float32, but its SCORES come from einsums that autocast rounds to bf16/fp16 first (a
      rounding the fused naive path does not have: absorbed and naive agree to bf16 precision only).
Low precision, by design: every matmul's output (including the q_norm/kv_norm inputs, so the cached
c_kv is bf16/fp16), SiLU and the gating product inside experts, and the logits.
NOT fp32 under autocast although the code casts: linear attention (components/attention.py) calls
.float() on phi(q), phi(k), v, but autocast recasts the operands of its chunk matmuls (q @ S, scores,
q . z) to bf16/fp16; only the running sums S, z accumulate in fp32 (CPU fp16 autocast, d 64, 4 heads,
random input: max error vs fp32 4.6e-4 at 1K tokens, 2.2e-2 at 4K).

fp16 has a 5-bit exponent (max 65504, smallest normal 6e-5): small gradients underflow to zero.
Loss scaling multiplies the loss by S before backward and divides the gradients by S before the
update; S halves whenever a gradient overflows (that step is skipped) and doubles after 2000
clean steps (torch.amp.GradScaler). Clipping must see the TRUE gradient, so unscale_ comes first.
The scaler's state (S and its growth counter) belongs in the checkpoint: a resumed run then skips
and scales exactly as the uninterrupted one would.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_CAPABILITY = (8, 0)        # Ampere: first CUDA generation with bf16 tensor cores


@dataclass(frozen=True)
class Precision:
    """How a device trains: `name` in ('fp32', 'bf16', 'fp16') on `device_type` ('cpu', 'cuda', 'mps')."""

    name: str
    device_type: str

    def __post_init__(self) -> None:
        if self.name not in AUTOCAST_DTYPES:
            raise ValueError(f"precision {self.name!r}: choose one of {tuple(AUTOCAST_DTYPES)}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs matmuls in; None = plain fp32, no autocast."""
        return AUTOCAST_DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        """fp16 only: bf16 has fp32's exponent range, so its gradients do not underflow."""
        return self.name == "fp16"

    def autocast(self) -> AbstractContextManager:
        """The context to run forward passes (and the loss) in; a no-op for fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def make_scaler(self, **options) -> torch.amp.GradScaler | None:
        """A fresh GradScaler for fp16, else None. `options` go to GradScaler (init_scale=2**16,
        growth_interval=2000, ... by default)."""
        return torch.amp.GradScaler(self.device_type, **options) if self.needs_scaler else None

    def describe(self) -> str:
        """For the run header, e.g. 'bf16 autocast on cuda' or 'fp16 autocast + loss scaling on cuda'."""
        if self.name == "fp32":
            return f"fp32 on {self.device_type}"
        return f"{self.name} autocast{' + loss scaling' if self.needs_scaler else ''} on {self.device_type}"


def choose_precision(device: torch.device | str, requested: str = "auto", *,
                     capability: tuple[int, int] | None = None) -> Precision:
    """The policy of the module docstring. `capability` (major, minor) stands in for
    torch.cuda.get_device_capability(device) (tests pass it; the real one is read otherwise)."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ValueError(f"--dtype {requested}: choose one of {', '.join(PRECISIONS)}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device}: the precision policy knows cpu, cuda and mps")
    if device.type != "cuda":
        return Precision("fp32" if requested == "auto" else requested, device.type)
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    native_bf16 = tuple(capability) >= BF16_MIN_CAPABILITY
    if requested == "auto":
        return Precision("bf16" if native_bf16 else "fp16", "cuda")
    if requested == "bf16" and not native_bf16:
        major, minor = capability
        raise ValueError(f"--dtype bf16: {device} (compute capability {major}.{minor}) has no native bf16 "
                         f"(needs {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}+); use --dtype fp16 or fp32")
    return Precision(requested, "cuda")


# --- one optimizer step, with or without a loss scaler ------------------------------------------------

def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """loss.backward(), through the scaler (gradients come out multiplied by its scale S) when given."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


def unscale_and_clip(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, params,
                     clip: float | None) -> torch.Tensor:
    """The TRUE pre-clip gradient norm (clipping to `clip`; None or 0 = measure only).

    With a scaler, the gradients are divided by S first (once per step: GradScaler refuses a second
    unscale_ before update). An overflowed fp16 step gives an inf/nan norm; `optimizer_step` skips it.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(params, clip or math.inf)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
    """optimizer.step() (via the scaler when given, then scaler.update()); True when the step was skipped.

    The scaler skips the update when a gradient is inf/nan and then multiplies S by its backoff factor
    (0.5), while a taken step keeps or grows S: "skipped" is read as "S went down" (two host syncs,
    next to the one scaler.step itself makes).
    """
    if scaler is None:
        optimizer.step()
        return False
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < scale_before


def step_with_scaler(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, params,
                     clip: float | None) -> tuple[torch.Tensor, bool]:
    """unscale_and_clip then optimizer_step -> (pre-clip gradient norm, skipped)."""
    grad_norm = unscale_and_clip(optimizer, scaler, params, clip)
    return grad_norm, optimizer_step(optimizer, scaler)
