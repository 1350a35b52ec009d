"""Checkpoints: round trip, weights_only refusal of pickled code, clear errors for missing /
truncated / corrupt / mismatched files, atomic writes, and SIGKILL at random moments."""

from __future__ import annotations

import builtins
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import pattern_ids, tiny_cfg, train_cfg, write_corpus

from components.deepseek_model import DeepSeekModel
from trainer import Trainer
from training import checkpoint
from training.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model, make_checkpoint

REPO = Path(__file__).resolve().parents[1]


def saved_model(path: Path, cfg=None) -> DeepSeekModel:
    torch.manual_seed(0)
    model = DeepSeekModel(cfg or tiny_cfg())
    model.routers()[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))     # a trained-looking bias
    atomic_save(make_checkpoint(model, step=7, kind="best", train_config={"lr": 1e-3}), path)
    return model


def test_round_trip_restores_config_weights_and_router_bias(tmp_path):
    cfg = tiny_cfg(top_k=1, q_latent_dim=32)
    model = saved_model(tmp_path / "m.pt", cfg)
    loaded, meta = load_model(tmp_path / "m.pt")
    assert loaded.cfg == cfg and meta["model_config"] == asdict(cfg)
    assert meta["step"] == 7 and meta["train_config"] == {"lr": 1e-3} and meta["tokenizer"]["name"] == "gpt2"
    assert "model" not in meta and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.routers()[0].bias, torch.tensor([0.1, -0.2, 0.3, -0.4]))
    assert not list(tmp_path.glob(".*.tmp"))                                # the temp file was renamed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.compile imports torch.jit
def test_compiled_and_ddp_prefixes_never_reach_the_file(tmp_path):
    model = DeepSeekModel(tiny_cfg())
    compiled = torch.compile(model)                  # lazy: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert checkpoint.clean_state_dict(compiled).keys() == model.state_dict().keys()
    ckpt = make_checkpoint(compiled, step=0)
    ckpt["model"] = {f"module._orig_mod.{k}": v for k, v in ckpt["model"].items()}   # an old wrapped file
    atomic_save(ckpt, tmp_path / "wrapped.pt")
    load_model(tmp_path / "wrapped.pt")


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({"rng": checkpoint.capture_rng()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class CreatesAFile:
    """Unpickling this runs open(marker, 'w'): the kind of object a malicious checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model = DeepSeekModel(tiny_cfg())
    ckpt = make_checkpoint(model, step=1)
    ckpt["trainer"] = {"note": CreatesAFile(marker)}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pt as unsafe: it contains pickled Python"):
        load_model(path)
    assert not marker.exists()
    # the file really is dangerous: a plain unpickling load runs the payload
    torch.load(path, weights_only=False)  # unsafe on purpose: shows what weights_only=True prevents
    assert marker.exists()


def test_missing_empty_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    saved_model(good)
    cases = {"missing.pt": None, "empty.pt": b"", "truncated.pt": good.read_bytes()[: good.stat().st_size // 2],
             "random.pt": os.urandom(4096)}
    expected = {"missing.pt": r"no checkpoint at .*missing\.pt: train one first",
                "empty.pt": r"empty \(0 bytes",
                "truncated.pt": r"truncated or corrupt .*use another checkpoint",
                "random.pt": r"truncated or corrupt"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=expected[name]) as err:
            load_model(tmp_path / name)
        assert "\n" not in str(err.value), name
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)


def test_loading_into_a_different_config_names_the_fields(tmp_path):
    saved_model(tmp_path / "m.pt")
    other = DeepSeekModel(tiny_cfg(n_layers=3, kv_latent_dim=8))
    with pytest.raises(CheckpointError, match=r"different model config: kv_latent_dim=16 \(model has 8\), "
                                              r"n_layers=2 \(model has 3\); build the model from the checkpoint"):
        checkpoint.load_model_state(other, load_checkpoint(tmp_path / "m.pt"), tmp_path / "m.pt")


def test_weights_that_do_not_fit_the_same_config_are_named(tmp_path):
    ckpt = make_checkpoint(DeepSeekModel(tiny_cfg()), step=0)
    del ckpt["model"]["norm.weight"]
    atomic_save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"do not fit this model \(missing \['norm\.weight'\], unexpected \[\]"):
        load_model(tmp_path / "edited.pt")


def test_a_newer_format_is_refused(tmp_path):
    ckpt = make_checkpoint(DeepSeekModel(tiny_cfg()), step=0)
    ckpt["format_version"] = checkpoint.FORMAT_VERSION + 1
    atomic_save(ckpt, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this code"):
        load_model(tmp_path / "new.pt")


def test_a_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_save({"step": 1}, path)
    before = path.read_bytes()

    def half_written(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"step": 2}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_stale_temp_files_are_cleaned_when_training_starts(tmp_path):
    stale = tmp_path / ".latest.pt.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    Trainer(tiny_cfg(), train_cfg(tmp_path, max_steps=1), train_ids=pattern_ids(3000))
    assert not stale.exists()


def test_sigkill_at_random_moments_leaves_a_loadable_latest(tmp_path):
    """Kill a real `train.py` run with SIGKILL 3 times -- at a random moment and twice while a save
    is in flight (its temp file exists) -- resuming in between; latest.pt always loads."""
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "train.py"), "--preset", "tiny", "--data", str(corpus), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--max-steps", "100000", "--save-every", "1",
               "--eval-every", "0", "--batch-size", "4", "--quiet", "--set", "sample_tokens=0"]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(20240601)
    steps, cut_saves = [], []
    for attempt, mode in enumerate(["during_save", "random", "during_save"]):
        proc = subprocess.Popen(command + (["--resume"] if attempt else []), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            start_step = steps[-1] if steps else 0
            deadline = time.monotonic() + 90
            # wait until this run has written a checkpoint of its own
            while time.monotonic() < deadline and proc.poll() is None:
                if (out / "latest.pt").exists() and _step_or_none(out / "latest.pt", start_step) > start_step:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            if mode == "random":
                time.sleep(rng.uniform(0.0, 0.5))
            else:                                     # kill while torch.save is writing the temp file
                while time.monotonic() < deadline and not list(out.glob(".latest.pt.*.tmp")):
                    time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            cut_saves.append(bool(list(out.glob(".latest.pt.*.tmp"))))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        ckpt = load_checkpoint(out / "latest.pt")
        assert ckpt["kind"] == "latest" and ckpt["step"] >= start_step + 1
        steps.append(ckpt["step"])
    assert any(cut_saves), "no kill landed inside a save; the test did not test atomicity"
    model, meta = load_model(out / "latest.pt")
    assert meta["step"] == steps[-1] and all(torch.isfinite(p).all() for p in model.parameters())


def _step_or_none(path: Path, default: int) -> int:
    try:
        return load_checkpoint(path)["step"]
    except CheckpointError:
        return default
