"""The CUDA path under bf16 and fp16 autocast: the CPU suite's equivalences, run on a GPU.

    absorbed MLA == naive MLA, cached decoding == full forward (logits and greedy tokens),
    sort-dispatched MoE == dense reference, resumed training == continuous training.

Marked `cuda` and skipped without a GPU (see conftest.py); scripts/gpu_check.sh runs them on one.
Weights stay fp32 (autocast), so both sides of each comparison hold the same numbers and differ only
by the rounding of their low-precision matmuls, in different orders and kernels. Tolerances, stated
once: the relative error ||a - b|| / ||b|| must stay under REL (bf16 keeps 8 significant bits,
eps 3.9e-3; fp16 11, eps 4.9e-4: a few eps after a few layers), and elementwise under ELEMENT.
On the CPU's autocast the same comparisons measure at most 6.3e-3 (bf16) and 4.5e-4 (fp16) relative;
a real bug (wrong position, wrong expert, missing cache entry) gives errors of order 1.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from training_helpers import fixed_batches, pattern_ids, tiny_cfg, train_cfg

from components.deepseek_model import DeepSeekModel
from components.moe import MoE, moe_dense_reference
from components.multi_head_latent_attention import MultiHeadLatentAttention
from constants import PRESETS
from training.precision import Precision, backward, choose_precision, step_with_scaler

pytestmark = pytest.mark.cuda

DTYPES = ["bf16", "fp16"]
REL = {"bf16": 2e-2, "fp16": 3e-3}
ELEMENT = {"bf16": dict(atol=6e-2, rtol=3e-2), "fp16": dict(atol=8e-3, rtol=8e-3)}
CFG = replace(PRESETS["tiny"], vocab_size=256)
DEVICE = torch.device("cuda")


def cuda_precision(name: str) -> Precision:
    try:
        return choose_precision(DEVICE, name)
    except ValueError as error:            # bf16 on a pre-Ampere GPU: the policy refuses it
        pytest.skip(str(error))


def assert_close_in(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    actual, expected = actual.float(), expected.float()
    relative = ((actual - expected).norm() / expected.norm()).item()
    assert relative < REL[name], f"{name}: relative error {relative:.2e} >= {REL[name]:.0e}"
    torch.testing.assert_close(actual, expected, **ELEMENT[name])


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("q_latent_dim", [48, None])
def test_absorbed_equals_naive(name, q_latent_dim):
    precision = cuda_precision(name)
    torch.manual_seed(0)
    mla = MultiHeadLatentAttention(64, 4, 32, 8, 16, 12, q_latent_dim=q_latent_dim, max_positions=64).to(DEVICE).eval()
    x = torch.randn(2, 11, 64, device=DEVICE)
    with torch.no_grad(), precision.autocast():
        naive, absorbed = mla(x, absorb=False), mla(x, absorb=True)
    assert naive.dtype == precision.autocast_dtype
    assert_close_in(name, absorbed, naive)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("absorb", [False, True])
def test_cached_decoding_equals_full_forward(name, absorb):
    precision = cuda_precision(name)
    torch.manual_seed(0)
    model = DeepSeekModel(CFG).to(DEVICE).eval()
    idx = torch.randint(CFG.vocab_size, (2, 20), device=DEVICE)
    with torch.no_grad(), precision.autocast():
        full, _, _ = model(idx)                                            # (B, 20, V)
        caches = model.new_caches()
        steps = [model(idx[:, :5], caches=caches, absorb=absorb)[0]]       # a 5-token prefill, then 1 by 1
        steps += [model(idx[:, t:t + 1], caches=caches, absorb=absorb)[0] for t in range(5, 20)]
    assert caches[0].length == 20
    assert_close_in(name, torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("name", DTYPES)
def test_cached_greedy_generation_picks_the_full_forward_argmax(name):
    """Every greedy token of the cached loop is the argmax of an uncached forward over its prefix,
    up to a near-tie: its logit is within ELEMENT's atol of that forward's best logit."""
    precision = cuda_precision(name)
    torch.manual_seed(0)
    model = DeepSeekModel(CFG).to(DEVICE).eval()
    prompt = torch.tensor([[3, 14, 15, 9, 26], [2, 7, 1, 8, 28]], device=DEVICE)
    with torch.no_grad(), precision.autocast():
        out = model.generate(prompt, 24, temperature=0)
        for t in range(prompt.shape[1], out.shape[1]):
            logits = model(out[:, :t])[0][:, -1].float()                   # (B, V) uncached
            chosen = logits.gather(1, out[:, t:t + 1]).squeeze(1)          # (B,)
            gap = logits.max(dim=-1).values - chosen
            assert (gap <= ELEMENT[name]["atol"]).all(), (t, gap.tolist())


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_moe_equals_dense_reference(name, score):
    precision = cuda_precision(name)
    torch.manual_seed(0)
    moe = MoE(d_model=16, expert_hidden_dim=24, n_routed_experts=6, n_shared_experts=1, top_k=2, score=score,
              route_scale=1.7, n_groups=3, topk_groups=2, use_bias=True).to(DEVICE)
    moe.router.bias.copy_(torch.linspace(-0.1, 0.1, 6))
    assert moe.router.bias.dtype == torch.float32 and moe.router.bias.device.type == DEVICE.type
    x = torch.randn(3, 7, 16, device=DEVICE)
    with torch.no_grad(), precision.autocast():
        y, stats = moe(x)
        reference = moe_dense_reference(moe, x)
    assert stats.tokens_per_expert.sum().item() == 3 * 7 * 2
    assert_close_in(name, y, reference)


# --- resume == continuous ----------------------------------------------------------------------------
# CUDA's index_add_ (the MoE combine) adds with atomics, so two runs of the same step can differ in the
# last bit; the losses of a resumed and a continuous run are compared to RESUME_ATOL, not bit for bit.
RESUME_ATOL = 2e-3


def helper_loop(precision, model, optimizer, scaler, batches):
    params = list(model.parameters())
    losses, skipped = [], []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            _, loss, _ = model(x.to(DEVICE), y.to(DEVICE))
        backward(loss, scaler)
        _, was_skipped = step_with_scaler(optimizer, scaler, params, clip=1.0)
        losses.append(loss.item())
        skipped.append(was_skipped)
    return losses, skipped


@pytest.mark.parametrize("name", DTYPES)
def test_resume_equals_continuous_with_the_precision_helpers(name):
    precision = cuda_precision(name)
    batches = fixed_batches(12, 4, CFG.context_length)
    options = {"init_scale": 2.0 ** 24} if precision.needs_scaler else {}   # fp16: skips around the split

    def fresh():
        torch.manual_seed(0)
        model = DeepSeekModel(CFG).to(DEVICE).train()
        return model, torch.optim.AdamW(model.parameters(), lr=3e-3), precision.make_scaler(**options)

    full = fresh()
    expected, expected_skips = helper_loop(precision, *full, batches)
    model, optimizer, scaler = fresh()
    first, _ = helper_loop(precision, model, optimizer, scaler, batches[:6])
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "grad_scaler": scaler.state_dict() if scaler else None}
    model, optimizer, scaler = fresh()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["grad_scaler"])
    second, second_skips = helper_loop(precision, model, optimizer, scaler, batches[6:])
    assert all(math.isfinite(v) for v in expected) and expected[-1] < expected[0] - 0.5
    assert second_skips == expected_skips[6:]
    torch.testing.assert_close(torch.tensor(first + second), torch.tensor(expected), atol=RESUME_ATOL, rtol=0)


@pytest.mark.parametrize("name", DTYPES)
def test_trainer_resume_equals_continuous(name, tmp_path):
    """The Trainer on CUDA with --dtype NAME: 4 steps + resume + 4 steps == 8 steps (as test_trainer on CPU)."""
    import trainer

    cuda_precision(name)
    ids = pattern_ids(6000)
    cfg = tiny_cfg(dropout=0.1, router_noise_std=0.05, balancing="both")
    settings = dict(max_steps=8, grad_accum=2, eval_every=3, device=str(DEVICE), dtype=name)

    def losses(run):
        return [r["loss"] for r in run.metrics if r["kind"] == "train"]

    full = trainer.Trainer(cfg, train_cfg(tmp_path / "full", **settings), train_ids=ids[:5000], val_ids=ids[5000:])
    full.train()
    first = trainer.Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=ids[:5000],
                            val_ids=ids[5000:])
    first.train(steps=4)
    del first
    second = trainer.Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=ids[:5000],
                             val_ids=ids[5000:], resume=True)
    second.train()
    torch.testing.assert_close(torch.tensor(losses(second)), torch.tensor(losses(full)), atol=RESUME_ATOL, rtol=0)
