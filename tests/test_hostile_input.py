"""Issue 24: hostile input, real faults. Each class of failure the independent sweep found, closed where the
input enters, tested here (the grader's part is in test_grading.py); scripts/bad_input_sweep.py runs the same
classes through the real command lines."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import shutil
import subprocess
import typing

import pytest
import torch
from safetensors.torch import load_file
from test_hugging_face_format import BASE, random_model, save

import inference
import train
from components.config import ModelConfig
from components.generation import SamplingConfig
from hugging_face.__main__ import main as hf_main
from training.checkpoint import atomic_save
from training.config import TrainConfig
from training.run_lock import FolderLocked, RunLock

NOT_NUMBERS = [math.nan, math.inf, -math.inf, "3e-3", None, True]


def numeric_fields(cls):
    """(name, annotation) of every int or float field, optional or not."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if kinds & {int, float}:
            yield f.name, type(None) in kinds


def field_cases():
    for cls in (ModelConfig, TrainConfig, SamplingConfig):
        for name, optional in numeric_fields(cls):
            for bad in NOT_NUMBERS:
                if not (bad is None and (optional or name == "stop_tokens")):     # None: no stop tokens
                    yield pytest.param(cls, name, bad, id=f"{cls.__name__}.{name}={bad!r}")


@pytest.mark.parametrize(("cls", "name", "bad"), list(field_cases()))
def test_every_numeric_config_field_refuses_non_finite_and_non_numbers(cls, name, bad):
    """NaN, infinity, a string (what a hostile checkpoint or record holds), None and a bool: a one-line
    ValueError that names the field, from the class's own validation -- never a TypeError or OverflowError
    later, never accepted."""
    base = cls(max_steps=10) if cls is TrainConfig else cls()
    with pytest.raises(ValueError) as info:
        dataclasses.replace(base, **{name: bad})
    message = str(info.value)
    assert "\n" not in message and name in message.split(":")[0], message


@pytest.mark.parametrize(("cls", "values", "phrase"), [
    (ModelConfig, {"rope_theta": -10000.0}, "finite number > 0"),
    (ModelConfig, {"norm_eps": -1.0}, "finite number > 0"),
    (ModelConfig, {"bias_update_rate": 5.0}, "must be <= 1"),
    (ModelConfig, {"capacity_factor": 1e300}, "must be <= n_routed_experts"),
    (TrainConfig, {"seed": 2**70}, "2**63"),
    (TrainConfig, {"epochs": 1e300}, "at most 1e6"),
    (TrainConfig, {"betas": (0.9, math.nan)}, "two numbers in [0, 1)"),
    (SamplingConfig, {"temperature": 1e-320}, "0 (greedy) or a number in [0.001, 1000]"),
    (SamplingConfig, {"presence_penalty": 1e308}, "[-100, 100]"),
    (SamplingConfig, {"repetition_penalty": 1e-300}, "[0.01, 100]"),
    (SamplingConfig, {"seed": 2**70}, "2**63"),
])
def test_out_of_range_numbers_are_refused_with_the_range(cls, values, phrase):
    base = cls(max_steps=10) if cls is TrainConfig else cls()
    with pytest.raises(ValueError, match=re.escape(phrase)):
        dataclasses.replace(base, **values)


@pytest.mark.parametrize("argv", [["--epochs", "inf"], ["--time-budget", "inf"], ["--set", "capacity_factor=inf"],
                                  ["--set", "bias_update_rate=inf"], ["--set", "rope_theta=nan"],
                                  ["--set", "weight_decay=inf"], ["--seed", str(2**70)]])
def test_train_refuses_non_finite_numbers_before_any_work(argv, capsys, monkeypatch):
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    assert train.main(["--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    assert "non-finite loss" not in err[0] and "Overflow" not in err[0]


@pytest.mark.parametrize(("argv", "phrase"), [
    (["--temperature", "1e-320"], "temperature"), (["--presence_penalty", "1e308"], "presence_penalty"),
    (["--beams", "100000"], "beams"), (["--num_samples", "1000000"], "num_samples"),
    (["--max_new_tokens", "1000000000"], "max_new_tokens"), (["--length_penalty", "nan"], "length_penalty")])
def test_inference_refuses_settings_that_break_sampling_or_memory(argv, phrase, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inference.main([*argv, "--model_path", "never/loaded.pt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("inference.py: error: ") and phrase in err[0], err


# --- hostile Hugging Face directories: every field read from a file is checked before use ----------------------

@pytest.fixture(scope="module")
def hf_export(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("hf")
    out = tmp / "hf"
    assert hf_main(["to-hf", str(save(random_model(BASE), tmp / "ours.pt")), str(out)]) == 0
    return out


def _config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


DELETE = object()
OUTSIDE = "../../elsewhere/x.safetensors"


def _shard_index(path, target):
    names = load_file(path / "model.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: target for k in names}}))


HF_CASES = {
    "config is a list": (lambda p: (p / "config.json").write_text("[1, 2]"), "not an object of fields"),
    "config is not JSON": (lambda p: (p / "config.json").write_text("{oops"), "is not JSON"),
    "rope_parameters a string": (lambda p: _config(p, rope_parameters="yarn"), "must be an object"),
    "no num_attention_heads": (lambda p: _config(p, num_attention_heads=DELETE), "has no num_attention_heads"),
    "hidden_size a string": (lambda p: _config(p, hidden_size="64"), "hidden_size='64': must be an integer"),
    "rms_norm_eps NaN": (lambda p: _config(p, rms_norm_eps=math.nan), "must be a finite number"),
    "tokenizer a string": (lambda p: _config(p, deepseek_from_scratch={"tokenizer": "gpt2"}),
                           "tokenizer must be an object"),
    "index not JSON": (lambda p: (p / "model.safetensors.index.json").write_text("not json"), "is not JSON"),
    "index without weight_map": (lambda p: (p / "model.safetensors.index.json").write_text("{}"), "no weight_map"),
    "shard outside the folder": (lambda p: _shard_index(p, OUTSIDE), "outside the model directory"),
    "shard by absolute path": (lambda p: _shard_index(p, str((p / "model.safetensors").resolve())),
                               "outside the model directory"),
    "max_position_embeddings huge": (lambda p: _config(p, max_position_embeddings=10**11), "RoPE tables"),
    "vocab_size huge": (lambda p: _config(p, vocab_size=10**11), "GiB"),
    "experts wider than their weights": (lambda p: _config(p, moe_intermediate_size=4096), "weights hold only"),
    "corrupt safetensors": (lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00" + b"garbage" * 10),
                            "not a readable weights file"),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_a_hostile_hf_directory_is_one_line_and_loads_nothing_from_elsewhere(case, hf_export, tmp_path, capsys):

    hf = tmp_path / "a" / "b" / "hf"
    shutil.copytree(hf_export, hf)
    # a valid weights file outside the model folder, where the traversal case points: it must not be read
    (tmp_path / "a" / "elsewhere").mkdir()
    shutil.copy(hf_export / "model.safetensors", tmp_path / "a" / "elsewhere" / "x.safetensors")
    break_it, phrase = HF_CASES[case]
    break_it(hf)
    code = hf_main(["from-hf", str(hf), str(tmp_path / "out.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert not (tmp_path / "out.pt").exists()


def test_from_hf_context_length_0_is_refused_not_the_default(hf_export, tmp_path, capsys):

    assert hf_main(["from-hf", str(hf_export), str(tmp_path / "out.pt"), "--context-length", "0"]) == 2
    assert "context_length=0" in capsys.readouterr().err


# --- symlinks: no writer follows a link it did not create -----------------------------------------------------

def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)
    lock.path.symlink_to(victim)
    with pytest.raises(FolderLocked, match="symbolic link"):
        lock.acquire()
    assert victim.read_text() == "keep me" and lock.path.is_symlink()


# --- a real full disk ------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MB tmpfs (root only); skipped, with the reason, where the machine does not allow mounting."""
    point = tmp_path / "small_disk"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real small filesystem needs root (mount -t tmpfs); the sweep's patched case covers the rest")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not allowed here ({done.stderr.decode().strip()[:100]})")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_a_real_full_disk_is_an_oserror_and_the_old_checkpoint_stays(tiny_tmpfs):
    """torch.save on a full filesystem raises RuntimeError('... unexpected pos ...'); atomic_save turns it into
    OSError(ENOSPC), which train.py reports in one line, and the checkpoint that was there is unchanged."""
    target = tiny_tmpfs / "latest.pt"
    atomic_save({"w": torch.zeros(10)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError) as info:
        atomic_save({"w": torch.zeros(1_000_000)}, target)          # 4 MB on a 2 MB disk
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tiny_tmpfs.iterdir()] == ["latest.pt"]      # no temporary file left behind
