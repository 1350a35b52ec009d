"""Issue 13: the bad inputs that used to end in a traceback (or were accepted silently), one test each.

The rule they check: a bad input gets one line naming the problem and the fix, before any work
starts, and nothing that existed is lost. scripts/bad_input_sweep.py runs the same cases (and more)
as subprocesses and reports any traceback.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from training_helpers import VOCAB, tiny_cfg

import inference
import train
from components.deepseek_model import DeepSeekModel
from constants import TINY
from utils import count_parameters, parameter_count_from_config


def one_error_line(err: str, prefix: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


# --- devices -----------------------------------------------------------------------------------------

def test_unknown_device_is_one_line_in_train_and_inference(capsys, monkeypatch):
    monkeypatch.setattr("data.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    assert train.main(["--preset", "tiny", "--device", "tpu"]) == 2
    line = one_error_line(capsys.readouterr().err, "train.py: error: ")
    assert "--device tpu: unknown device; use auto, cpu, cuda, cuda:N or mps" in line
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["--device", "tpu", "--model_path", "never/loaded.pt"])
    assert exit_info.value.code == 2
    assert "--device tpu: unknown device" in one_error_line(capsys.readouterr().err, "inference.py: error: ")
    assert train.main(["--preset", "tiny", "--device", "meta"]) == 2
    assert "runs on cpu, cuda or mps" in one_error_line(capsys.readouterr().err, "train.py: error: ")


# --- model configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {}, {"q_latent_dim": 16}, {"attention": "mha"}, {"attention": "gqa", "n_kv_heads": 2}, {"attention": "mqa"},
    {"attention": "linear"}, {"ffn": "dense"}, {"mtp_depth": 2}, {"tie_embeddings": False, "n_dense_layers": 0},
    {"rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 12}, {"n_shared_experts": 0},
])
def test_parameter_count_from_config_matches_the_built_model(overrides):
    cfg = tiny_cfg(**overrides)
    model = DeepSeekModel(cfg)
    assert parameter_count_from_config(cfg) == count_parameters(model)
    storages = {t.untyped_storage().data_ptr(): t.numel() for t in model.state_dict().values()}
    assert parameter_count_from_config(cfg, buffers=True) == sum(storages.values())   # + router biases


@pytest.mark.parametrize("balancing, overrides, fix", [
    ("aux_free", {"seq_balance_coef": 1e-4}, "use balancing='both'"),
    ("aux_free", {"z_loss_coef": 1e-3}, "use balancing='both'"),
    ("aux_free", {"expert_balance_coef": 0.05}, "use balancing='both'"),
    ("none", {"kl_balance_coef": 0.1}, "use balancing='aux_loss'"),
])
def test_balancing_without_a_loss_rejects_the_coefficients_it_would_ignore(balancing, overrides, fix):
    (name,) = overrides
    with pytest.raises(ValueError, match=rf"ModelConfig\.{name}=.*balancing='{balancing}' adds no balance loss, so "
                                         rf"it would be ignored; {re.escape(fix)}"):
        dataclasses.replace(TINY, balancing=balancing, **overrides)
    kept = dataclasses.replace(TINY, balancing="both", **overrides).balance_coefs     # V3: bias + the loss
    assert kept[{"seq_balance_coef": "sequence", "z_loss_coef": "z", "expert_balance_coef": "expert",
                 "kl_balance_coef": "kl"}[name]] == overrides[name]
    # the defaults (0, and expert_balance_coef=0.01) and an explicit 0 stay valid under every balancing
    assert dataclasses.replace(TINY, balancing=balancing, expert_balance_coef=0.0).balance_coefs["expert"] == 0.0


def test_mtp_depth_must_be_below_the_context_length(capsys, monkeypatch):
    monkeypatch.setattr("data.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    with pytest.raises(ValueError, match=r"ModelConfig\.mtp_depth=64: must be < context_length=64"):
        dataclasses.replace(TINY, mtp_depth=64)
    dataclasses.replace(TINY, mtp_depth=63)
    assert train.main(["--preset", "tiny", "--set", "mtp_depth=100"]) == 2
    assert "mtp_depth=100: must be < context_length" in one_error_line(capsys.readouterr().err, "train.py: error: ")


# --- capacity: a training-time mechanism ------------------------------------------------------------

def capacity_model() -> DeepSeekModel:
    """A model whose every MoE router sends all tokens to experts 0 and 1, with capacity_factor=1:
    in a batch, most (token, slot) pairs overflow, so dropping would be visible."""
    torch.manual_seed(0)
    model = DeepSeekModel(tiny_cfg(capacity_factor=1.0, n_dense_layers=0))
    for router in model.routers():
        router.bias[:2] = 10.0
    return model.eval()


def test_capacity_factor_drops_in_training_mode_only():
    model = capacity_model()
    x = torch.randint(0, VOCAB, (3, 20))
    with torch.no_grad():
        _, _, stats = model(x)
        assert all(s.dropped_tokens.item() == 0 for s in stats.moe)
        batched, _, _ = model(x)
        for row in range(3):              # one row's logits do not depend on the other rows
            alone, _, _ = model(x[row:row + 1])
            torch.testing.assert_close(batched[row:row + 1], alone, atol=1e-5, rtol=1e-5)
    model.train()
    _, _, stats = model(x, x)
    assert sum(s.dropped_tokens.item() for s in stats.moe) > 0          # training still drops


def test_capacity_factor_cached_generation_equals_uncached_greedy():
    model = capacity_model()
    prompt = torch.randint(0, VOCAB, (2, 7))
    cached = model.generate(prompt, 12, temperature=0.0)
    uncached = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _, _ = model(uncached)
            uncached = torch.cat([uncached, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached)


# --- checkpoints that must be refused before anything is built --------------------------------------

class _RunsCode:
    def __reduce__(self):
        import os
        return (os.system, ("echo this must never run",))


def small_checkpoint(path, **config_changes):
    """A TINY-vocabulary model's checkpoint; `config_changes` edit its recorded config (weights unchanged)."""
    from checkpoint import atomic_save, make_checkpoint

    torch.manual_seed(0)
    ckpt = make_checkpoint(DeepSeekModel(tiny_cfg()), step=0, kind="best")
    ckpt["model_config"] |= config_changes
    atomic_save(ckpt, path)
    return path


def test_a_pickle_that_calls_a_blocked_global_is_refused_as_unsafe(tmp_path):
    from checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and "truncated or corrupt" not in message
    assert message.startswith(f"refused to load {path} as unsafe") and "system" in message


def test_a_config_describing_a_huge_model_is_refused_before_building(tmp_path, monkeypatch):
    import checkpoint

    path = small_checkpoint(tmp_path / "huge.pt", d_model=65536, n_layers=64, expert_hidden_dim=65536)
    monkeypatch.setattr(checkpoint, "DeepSeekModel", lambda cfg: pytest.fail("the model was built before the check"))
    with pytest.raises(checkpoint.CheckpointError, match=r"its config describes a model of [\d,]+ parameters, but "
                                                         r"the file holds only [\d,]+ weights"):
        checkpoint.load_model(path)


def test_a_model_that_does_not_fit_in_memory_is_refused_before_building(tmp_path, monkeypatch):
    import checkpoint

    path = small_checkpoint(tmp_path / "fine.pt")
    monkeypatch.setattr(checkpoint, "available_memory", lambda: 1024)
    monkeypatch.setattr(checkpoint, "DeepSeekModel", lambda cfg: pytest.fail("the model was built before the check"))
    with pytest.raises(checkpoint.CheckpointError, match=r"needs about .* GiB of memory, only 0\.0 GiB are available"):
        checkpoint.load_model(path)


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, capsys):
    from checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model

    path = small_checkpoint(tmp_path / "nan.pt")
    ckpt = load_checkpoint(path)
    ckpt["model"]["blocks.1.attn.w_uk.weight"][0, 0] = float("nan")
    ckpt["model"]["norm.weight"][3] = float("inf")
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN/inf\) in 2 tensor\(s\): "
                                              r"blocks\.1\.attn\.w_uk\.weight, norm\.weight"):
        load_model(path)
    assert inference.main(["--model_path", str(path), "--prompt", "Hi"]) == 1
    assert "norm.weight" in one_error_line(capsys.readouterr().err, "error: ")
