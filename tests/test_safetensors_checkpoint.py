"""best_model as safetensors + JSON: the Trainer writes it beside best_model.pt, it loads to the same model,
and inference.py samples the same text from the .pt, the .safetensors and a Hugging Face directory."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from training_helpers import pattern_ids, tiny_cfg, train_cfg

import inference
from components.deepseek_model import DeepSeekModel
from constants import TINY
from hugging_face.__main__ import main as convert
from trainer import Trainer
from training.checkpoint import CheckpointError, atomic_save, load_model, make_checkpoint, save_safetensors


def test_trainer_writes_best_model_as_safetensors_and_json_that_load_to_the_same_model(tmp_path):
    trainer = Trainer(tiny_cfg(), train_cfg(tmp_path, max_steps=2, eval_every=2), train_ids=pattern_ids(5000),
                      val_ids=pattern_ids(2000, seed=1))
    trainer.train()
    meta = json.loads((tmp_path / "best_model.json").read_text())
    assert meta["kind"] == "best" and meta["step"] == 2 and meta["model_config"] == tiny_cfg().to_dict()
    assert "optimizer" not in meta and "model" not in meta              # the training state stays in the .pt
    from_pt, _ = load_model(tmp_path / "best_model.pt")
    from_st, st_meta = load_model(tmp_path / "best_model.safetensors")
    assert st_meta["trainer"]["best_val_loss"] == pytest.approx(trainer.best_val_loss)
    for key, value in from_pt.state_dict().items():                    # router biases included
        assert torch.equal(value, from_st.state_dict()[key]), key
    assert from_st.head.weight is from_st.embed.weight                  # tied again after loading
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(from_st(ids)[0], from_pt(ids)[0], atol=0, rtol=0)


def test_safetensors_without_its_json_or_corrupt_is_one_line(tmp_path):
    torch.manual_seed(0)
    ckpt = make_checkpoint(DeepSeekModel(tiny_cfg()), step=1, kind="best")
    path = save_safetensors(ckpt, tmp_path / "best_model.safetensors")
    path.with_suffix(".json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(CheckpointError, match="no best_model.json beside best_model.safetensors"):
        load_model(path)
    (tmp_path / "elsewhere.json").rename(path.with_suffix(".json"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        load_model(path)
    assert "\n" not in str(error.value)


def test_inference_accepts_pt_safetensors_and_a_hugging_face_directory(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = replace(TINY, n_layers=1, context_length=32, d_model=32, kv_latent_dim=8, expert_hidden_dim=32)
    ckpt = make_checkpoint(DeepSeekModel(cfg), step=0, kind="best")
    atomic_save(ckpt, tmp_path / "best_model.pt")
    save_safetensors(ckpt, tmp_path / "best_model.safetensors")
    assert convert(["to-hf", str(tmp_path / "best_model.pt"), str(tmp_path / "hf")]) == 0
    texts = []
    for path in ("best_model.pt", "best_model.safetensors", "hf"):
        capsys.readouterr()
        argv = ["--model_path", str(tmp_path / path), "--prompt", "The best way", "--max_new_tokens", "12",
                "--temperature", "0"]
        assert inference.main(argv) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"loaded {tmp_path / path}")
        texts.append(out[1])
    assert texts[0].startswith("The best way") and texts[0] == texts[1] == texts[2]
