"""Precision policy: what each device picks (mocked capabilities, no GPU needed), one-line errors, and
fp16 + GradScaler / bf16 autocast training a TINY model on the CPU's autocast, resumable exactly."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import replace

import pytest
import torch
from training_helpers import fixed_batches

from components.deepseek_model import DeepSeekModel
from constants import PRESETS
from training.precision import Precision, backward, choose_precision, optimizer_step, step_with_scaler, unscale_and_clip

# --- the policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "capability", "expected"), [
    ("cpu", None, "fp32"),
    ("mps", None, "fp32"),
    ("cuda", (7, 5), "fp16"),      # T4 (Colab's free GPU)
    ("cuda", (7, 0), "fp16"),      # V100
    ("cuda", (8, 0), "bf16"),      # A100
    ("cuda", (8, 6), "bf16"),      # RTX 30xx / A10
    ("cuda", (9, 0), "bf16"),      # H100 / H200
])
def test_auto_policy_per_device(device, capability, expected):
    precision = choose_precision(torch.device(device), capability=capability)
    assert precision.name == expected and precision.device_type == device
    assert precision.needs_scaler == (expected == "fp16")
    assert precision.autocast_dtype == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[expected]


def test_capability_is_read_from_torch_when_not_given(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (7, 5))
    assert choose_precision(torch.device("cuda:1")).name == "fp16"
    assert asked == [torch.device("cuda:1")]


@pytest.mark.parametrize(("device", "capability", "requested"), [
    ("cpu", None, "fp32"), ("cpu", None, "bf16"), ("cpu", None, "fp16"),
    ("mps", None, "fp16"), ("mps", None, "bf16"),
    ("cuda", (9, 0), "fp32"), ("cuda", (9, 0), "fp16"), ("cuda", (8, 0), "bf16"), ("cuda", (7, 5), "fp16"),
    ("cuda", (7, 5), "fp32"),
])
def test_an_explicit_request_overrides_the_policy(device, capability, requested):
    precision = choose_precision(device, requested, capability=capability)
    assert precision == Precision(requested, torch.device(device).type)


@pytest.mark.parametrize(("device", "requested", "capability", "message"), [
    ("cuda", "bf16", (7, 5), r"^--dtype bf16: cuda \(compute capability 7\.5\) has no native bf16 \(needs 8\.0\+\); "
                             r"use --dtype fp16 or fp32$"),
    ("cpu", "fp64", None, r"^--dtype fp64: choose one of auto, fp32, bf16, fp16$"),
    ("cuda", "half", (9, 0), r"^--dtype half: choose one of auto, fp32, bf16, fp16$"),
    ("meta", "auto", None, r"^device meta: the precision policy knows cpu, cuda and mps$"),
])
def test_impossible_requests_give_one_line_errors(device, requested, capability, message):
    with pytest.raises(ValueError, match=message) as error:
        choose_precision(device, requested, capability=capability)
    assert "\n" not in str(error.value)


def test_precision_rejects_an_unknown_name():
    with pytest.raises(ValueError, match=r"precision 'int8': choose one of \('fp32', 'bf16', 'fp16'\)"):
        Precision("int8", "cpu")


def test_autocast_context_and_scaler_per_precision():
    x, w = torch.randn(3, 4), torch.randn(4, 5)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        precision = Precision(name, "cpu")
        with precision.autocast():
            assert (x @ w).dtype == dtype, name
        scaler = precision.make_scaler()
        assert (scaler is not None) == (name == "fp16")
    assert Precision("fp16", "cpu").make_scaler(init_scale=8.0).get_scale() == 8.0
    assert Precision("fp16", "cuda").describe() == "fp16 autocast + loss scaling on cuda"
    assert Precision("bf16", "cuda").describe() == "bf16 autocast on cuda"
    assert Precision("fp32", "mps").describe() == "fp32 on mps"


# --- training on the CPU's autocast ------------------------------------------------------------------
# torch 2.13's CPU autocast runs linear, matmul, einsum and SDPA in fp16 as well as bf16 (checked by
# test_autocast_context_and_scaler_per_precision and by the logits' dtype below), and GradScaler('cpu')
# unscales CPU gradients: the whole fp16 path runs here, only slower than on a GPU.

CFG = replace(PRESETS["tiny"], vocab_size=256)
BATCHES = fixed_batches(12, 4, CFG.context_length)


def fresh_run(precision: Precision, **scaler_options):
    torch.manual_seed(0)
    model = DeepSeekModel(CFG).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return model, optimizer, precision.make_scaler(**scaler_options)


def train_steps(precision, model, optimizer, scaler, batches) -> tuple[list[float], list[bool]]:
    """The loop a trainer runs: autocast forward, scaled backward, unscale + clip, step; per-step results."""
    params = list(model.parameters())
    losses, skipped = [], []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logits, loss, _ = model(x, y)
        assert logits.dtype == (precision.autocast_dtype or torch.float32)   # autocast really ran
        backward(loss, scaler)
        grad_norm, was_skipped = step_with_scaler(optimizer, scaler, params, clip=1.0)
        assert was_skipped or math.isfinite(grad_norm.item())
        losses.append(loss.item())
        skipped.append(was_skipped)
    return losses, skipped


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_autocast_trains_tiny_and_tracks_fp32(name):
    precision = Precision(name, "cpu")
    losses, skipped = train_steps(precision, *fresh_run(precision), BATCHES)
    reference, _ = train_steps(Precision("fp32", "cpu"), *fresh_run(Precision("fp32", "cpu")), BATCHES)
    assert all(math.isfinite(v) for v in losses) and not any(skipped)
    assert losses[-1] < losses[0] - 1.0                  # 5.57 -> ~3.87 in 12 steps on learnable ids
    # same initial weights and data: the low-precision run follows fp32 to ~1% over 12 steps
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), atol=0.03, rtol=0.01)


def test_overflowing_fp16_steps_are_skipped_and_the_scale_backs_off():
    precision = Precision("fp16", "cpu")
    model, optimizer, scaler = fresh_run(precision, init_scale=2.0 ** 24)   # scaled gradients overflow fp16
    before = copy.deepcopy(model.state_dict())
    x, y = BATCHES[0]
    with precision.autocast():
        _, loss, _ = model(x, y)
    backward(loss, scaler)
    grad_norm = unscale_and_clip(optimizer, scaler, list(model.parameters()), clip=1.0)
    assert not math.isfinite(grad_norm.item())
    assert optimizer_step(optimizer, scaler) is True
    assert scaler.get_scale() == 2.0 ** 23
    for key, value in model.state_dict().items():             # a skipped step changes no weight
        assert torch.equal(value, before[key]), key
    losses, skipped = train_steps(precision, model, optimizer, scaler, BATCHES)
    assert any(skipped) and not all(skipped)                  # backs off until the gradients fit, then learns
    assert losses[-1] < losses[0] - 0.5


def test_scaler_state_round_trip_makes_a_resumed_fp16_run_exact():
    """6 + 6 steps with a checkpoint in between == 12 steps, while the scale is still backing off.

    init_scale 2^24 skips the first ~5 steps; at the split the scale is mid-way, so a resumed run with a
    fresh scaler would skip again and diverge: the scaler's state_dict is what keeps it exact.
    """
    precision = Precision("fp16", "cpu")
    full = fresh_run(precision, init_scale=2.0 ** 24)
    expected, expected_skips = train_steps(precision, *full, BATCHES)
    assert any(expected_skips[:6]) and not all(expected_skips)

    model, optimizer, scaler = fresh_run(precision, init_scale=2.0 ** 24)
    first, _ = train_steps(precision, model, optimizer, scaler, BATCHES[:6])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)             # plain tensors and numbers: weights_only loads it

    resumed_model, resumed_optimizer, resumed_scaler = fresh_run(precision)   # default scaler, then restored
    resumed_model.load_state_dict(ckpt["model"])
    resumed_optimizer.load_state_dict(ckpt["optimizer"])
    resumed_scaler.load_state_dict(ckpt["grad_scaler"])
    second, second_skips = train_steps(precision, resumed_model, resumed_optimizer, resumed_scaler, BATCHES[6:])

    torch.testing.assert_close(torch.tensor(first + second), torch.tensor(expected), atol=0.0, rtol=0.0)
    assert second_skips == expected_skips[6:]
    assert resumed_scaler.state_dict() == full[2].state_dict()
    for key, value in full[0].state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, atol=0.0, rtol=0.0)

    # and the check can fail: without the scaler's state the resumed run takes different steps
    fresh_model, fresh_optimizer, fresh_scaler = fresh_run(precision, init_scale=2.0 ** 24)
    fresh_model.load_state_dict(ckpt["model"])
    fresh_optimizer.load_state_dict(ckpt["optimizer"])
    diverged, _ = train_steps(precision, fresh_model, fresh_optimizer, fresh_scaler, BATCHES[6:])
    assert diverged != second
