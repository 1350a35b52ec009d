"""The assembled model: shapes, initial loss, hand parameter counts, cache bytes, cached decoding."""

import dataclasses
import math
import subprocess
from pathlib import Path

import pytest
import torch

import components
from components.deepseek_model import DeepSeekModel
from components.moe import MoE
from constants import TINY
from utils import (
    count_active_parameters,
    count_parameters,
    kv_cache_bytes,
    kv_cache_values_per_token,
    measured_cache_bytes,
)

SMALL_VOCAB = dataclasses.replace(TINY, vocab_size=256)   # fast variants for logic tests

ATTENTION_VARIANTS = {
    "mla": {},
    "mla_q_latent": {"q_latent_dim": 24},
    "mha": {"attention": "mha"},
    "gqa": {"attention": "gqa", "n_kv_heads": 2},
    "mqa": {"attention": "mqa"},
    "linear": {"attention": "linear"},
}


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return DeepSeekModel(cfg).eval()


def test_forward_shapes_and_aux():
    cfg = SMALL_VOCAB
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    logits, loss, aux = model(idx, targets=idx)
    assert logits.shape == (2, 10, cfg.vocab_size)
    assert loss.shape == () and aux.ce.shape == ()
    assert len(aux.moe) == cfg.n_layers - cfg.n_dense_layers
    assert aux.moe[0].tokens_per_expert.shape == (cfg.n_routed_experts,)
    assert int(aux.moe[0].tokens_per_expert.sum()) == 2 * 10 * cfg.top_k
    assert len(model.routers()) == cfg.n_layers - cfg.n_dense_layers
    logits, loss, aux = model(idx)
    assert loss is None and aux.ce is None


def test_initial_loss_is_log_vocab():
    """Sensible init: on random tokens the model starts near uniform, loss ~ ln(50257) = 10.82."""
    model = _model(TINY)
    idx = torch.randint(0, TINY.vocab_size, (4, 32))
    _, _, aux = model(idx, targets=torch.randint(0, TINY.vocab_size, (4, 32)))
    assert abs(aux.ce.item() - math.log(TINY.vocab_size)) < 0.3


def test_loss_is_ce_plus_weighted_balance_losses():
    cfg = dataclasses.replace(SMALL_VOCAB, balancing="both", expert_balance_coef=0.01, z_loss_coef=1e-3)
    model = _model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    _, loss, aux = model(idx, targets=idx)
    assert set(aux.balance_losses) == {"expert", "z"}
    torch.testing.assert_close(loss.detach(), aux.ce + aux.balance_loss, rtol=1e-6, atol=1e-6)
    assert aux.ce.item() > 0 and aux.balance_loss.item() > 0


def test_parameter_counts_match_hand_count_for_tiny():
    V, d, L, H, hd = 50257, 64, 2, 4, 16
    nope, rope, v, C = hd, hd // 2, hd, 16
    mla = (d * H * nope + d * H * rope          # w_q, w_qr (no query compression in TINY)
           + d * C + C + d * rope               # w_dkv, kv_norm, w_kr
           + C * H * nope + C * H * v           # w_uk, w_uv
           + H * v * d)                         # w_o
    block_norms = 2 * d
    expert = 3 * d * 128
    dense = 3 * d * (128 * 3)                   # equal active width: (1 shared + top-2) x 128
    moe = 4 * expert + 1 * expert + d * 4       # routed + shared + router gate
    total = V * d + d + L * (mla + block_norms) + dense + moe   # tied head, final norm
    active = total - (4 - 2) * expert           # a token uses 2 of the 4 routed experts
    model = DeepSeekModel(TINY)
    assert count_parameters(model) == total == 3_441_312
    assert count_active_parameters(model) == active
    untied = DeepSeekModel(dataclasses.replace(TINY, tie_embeddings=False))
    assert count_parameters(untied) == total + V * d
    assert count_active_parameters(untied) == active   # embedding lookup is not a matmul; head counts


@pytest.mark.parametrize("variant", sorted(ATTENTION_VARIANTS))
def test_measured_cache_bytes_equal_formula(variant):
    cfg = dataclasses.replace(SMALL_VOCAB, **ATTENTION_VARIANTS[variant])
    model = _model(cfg)
    caches = model.new_caches()
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, 7)), caches=caches)
        model(torch.randint(0, cfg.vocab_size, (1, 1)), caches=caches)
    assert measured_cache_bytes(caches) == kv_cache_bytes(cfg, 8, batch=1, bytes_per_value=4)
    if cfg.attention == "mla":
        per_token = cfg.kv_latent_dim + cfg.resolved().rope_head_dim
        assert caches[0].values_per_token() == per_token == kv_cache_values_per_token(cfg)


@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("variant", sorted(ATTENTION_VARIANTS))
def test_cached_decoding_equals_full_forward(variant, absorb):
    cfg = dataclasses.replace(SMALL_VOCAB, **ATTENTION_VARIANTS[variant])
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full, _, _ = model(idx)
        caches = model.new_caches()
        prefill, _, _ = model(idx[:, :5], caches=caches, absorb=absorb)
        steps = [model(idx[:, t:t + 1], caches=caches, absorb=absorb)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=2e-5, rtol=1e-4)


def test_context_overflow_is_a_clear_error():
    model = _model(SMALL_VOCAB)
    with pytest.raises(ValueError, match="exceed context_length"):
        model(torch.zeros(1, SMALL_VOCAB.context_length + 1, dtype=torch.long))


def test_dense_ffn_everywhere_has_no_routers():
    model = _model(dataclasses.replace(SMALL_VOCAB, ffn="dense"))
    assert model.routers() == [] and not any(isinstance(m, MoE) for m in model.modules())
    idx = torch.randint(0, 256, (1, 8))
    _, loss, aux = model(idx, targets=idx)
    assert aux.moe == [] and aux.balance_loss.item() == 0.0


def test_multi_token_prediction_adds_a_weighted_loss():
    cfg = dataclasses.replace(SMALL_VOCAB, mtp_depth=1, mtp_loss_weight=0.3)
    model = _model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    targets = torch.randint(0, cfg.vocab_size, (2, 16))
    _, loss, aux = model(idx, targets=targets)
    assert aux.mtp_loss is not None and aux.mtp_loss.item() > 0
    torch.testing.assert_close(loss.detach(), aux.ce + 0.3 * aux.mtp_loss + aux.balance_loss)
    loss.backward()
    assert model.mtp.projections[0].weight.grad.abs().sum() > 0
    # the MTP block's router is a router too: the trainer updates its bias as well
    assert len(model.routers()) == cfg.n_layers - cfg.n_dense_layers + 1
    # MTP is training-only: it does not count as an active (inference) parameter
    base = DeepSeekModel(SMALL_VOCAB)
    assert count_active_parameters(model) == count_active_parameters(base)


def test_multi_token_prediction_targets_are_one_further_ahead():
    """Module 1 at position i sees t_{i+1} and must predict t_{i+2} = targets[:, i+1]; V3 eq 24 divides
    the summed cross-entropy of the T-1 predictable positions by T."""
    cfg = dataclasses.replace(SMALL_VOCAB, mtp_depth=1, ffn="dense")
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (1, 9))
    targets = torch.roll(idx, -1, dims=1)
    hidden = torch.randn(1, 9, cfg.d_model)
    loss, _ = model.mtp(hidden, idx, targets, model.embed, model.head)
    h = model.mtp.projections[0](torch.cat([model.mtp.hidden_norms[0](hidden[:, :8]),
                                            model.mtp.embed_norms[0](model.embed(idx[:, 1:]))], -1))
    h, _ = model.mtp.blocks[0](h)
    logits = model.head(model.mtp.out_norms[0](h))
    expected = torch.nn.functional.cross_entropy(logits[0], targets[0, 1:], reduction="sum") / 9
    torch.testing.assert_close(loss, expected)


def test_tiny_model_overfits_one_batch():
    """Loss falls below 1.0 within a few hundred steps on one fixed batch."""
    torch.manual_seed(0)
    model = DeepSeekModel(TINY).train()
    idx = torch.randint(0, TINY.vocab_size, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, fused=True)
    for _ in range(300):
        _, loss, aux = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if aux.ce.item() < 1.0:
            break
    assert aux.ce.item() < 1.0


def test_fused_head_cross_entropy_equals_linear_plus_cross_entropy():
    """head_cross_entropy (the fp32 CPU training path) == F.linear + F.cross_entropy: values and gradients."""
    import torch.nn.functional as F

    from training.fast_head import head_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(12, 8, requires_grad=True)
    weight = torch.randn(37, 8, requires_grad=True)                 # odd V: the logits rows are padded
    targets = torch.randint(0, 37, (12,))
    probe = torch.randn(12, 37)                                      # a second use of the logits
    loss, logits = head_cross_entropy(hidden, weight, targets)
    ((loss * 3.0) + (logits * probe).sum()).backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    ref_weight = weight.detach().clone().requires_grad_()
    ref_logits = F.linear(ref_hidden, ref_weight)
    ref_loss = F.cross_entropy(ref_logits, targets)
    ((ref_loss * 3.0) + (ref_logits * probe).sum()).backward()
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(hidden.grad, ref_hidden.grad)
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    assert logits.view(-1, 37).shape == (12, 37)


def test_fused_head_cross_entropy_loss_only_and_underflowing_targets():
    """The usual training call (only the loss is used) == F.cross_entropy, also for rows whose target
    probability underflows fp32 (a logit ~100 below the row's maximum: -log p would read inf)."""
    import torch.nn.functional as F

    from training.fast_head import head_cross_entropy

    torch.manual_seed(1)
    hidden = torch.randn(10, 6)
    hidden[:3] *= 60.0                                               # very confident rows
    weight = torch.randn(53, 6)
    targets = torch.randint(0, 53, (10,))
    ref_logits = F.linear(hidden, weight)
    worst = ref_logits[:3].argmin(dim=-1)
    targets[:3] = worst                                              # their least likely token
    assert (ref_logits[:3].max(-1).values - ref_logits[:3].min(-1).values > 110).all()
    assert (ref_logits.softmax(-1)[torch.arange(3), worst] == 0).all()   # p underflows to 0 in fp32
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = head_cross_entropy(h, w, targets)
    loss.backward()
    rh, rw = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = F.cross_entropy(F.linear(rh, rw), targets)
    ref.backward()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h.grad, rh.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, rw.grad, rtol=1e-5, atol=1e-6)


def test_model_loss_is_the_same_with_and_without_the_fused_head():
    model = _model(SMALL_VOCAB).train()
    idx = torch.randint(0, SMALL_VOCAB.vocab_size, (2, 16))
    targets = torch.randint(0, SMALL_VOCAB.vocab_size, (2, 16))
    logits, loss, _ = model(idx, targets)                            # fused (fp32 CPU)
    loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ignored = targets.clone()
    ignored[0, 0] = -100                                             # ignore_index: the plain path
    _, plain_loss, _ = model(idx, ignored)
    plain_logits = model(idx)[0]
    torch.testing.assert_close(logits, plain_logits)
    weights = torch.ones(32)
    weights[0] = 0.0
    expected = (torch.nn.functional.cross_entropy(plain_logits.flatten(0, 1), targets.flatten(), reduction="none")
                * weights).sum() / 31
    torch.testing.assert_close(plain_loss, expected)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(idx)[0].flatten(0, 1), targets.flatten()).backward()
    plain_grads = [p.grad for p in model.parameters() if p.grad is not None]
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-4)


def test_the_package_exports_the_model_and_its_config_and_build_outputs_are_ignored():
    assert components.DeepSeekModel is DeepSeekModel and components.ModelConfig.__name__ == "ModelConfig"
    assert {"DeepSeekModel", "ModelConfig", "generate"} <= set(components.__all__)
    # `components.beam_search` stays the submodule (chapter 7 uses its sequence_log_prob), not the function
    assert hasattr(components.beam_search, "sequence_log_prob")
    repo = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(["git", "check-ignore", "hf_model/config.json", "build/x"], cwd=repo,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["hf_model/config.json", "build/x"]
