"""Issue 24, continued: hostile checkpoint fields, unbounded work, hangs, silent results, records, and writers
that must not follow a planted symlink. Each case is refused where the input enters, in one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from training_helpers import write_corpus

import train
from training.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model

# --- hostile checkpoint fields: every field read from a latest.pt is type-checked before use -------------------

TRAIN = ["--preset", "tiny", "--batch-size", "2", "--eval-every", "0", "--quiet", "--set", "sample_tokens=0",
         "--set", "eval_batches=1"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real one-step run: its latest.pt is what every hostile variant below starts from."""
    tmp = tmp_path_factory.mktemp("run")
    corpus = write_corpus(tmp / "corpus", n_essays=6, words_per_essay=200)
    out = tmp / "run"
    common = [*TRAIN, "--data", str(corpus), "--cache-dir", str(tmp / "cache")]
    assert train.main([*common, "--out", str(out), "--max-steps", "1", "--save-every", "1"]) == 0
    return common, out


def _set(path: str, value):
    def edit(ckpt):
        *parents, last = path.split("/")
        holder = ckpt
        for key in parents:
            holder = holder[int(key) if isinstance(holder, list) else key]
        if value is KeyError:
            del holder[last]
        else:
            holder[int(last) if isinstance(holder, list) else last] = value
    return edit


HOSTILE_FIELDS = {
    "format_version a string": (_set("format_version", "1"), "'format_version'"),
    "format_version a bool": (_set("format_version", True), "'format_version'"),
    "tokenizer a string": (_set("tokenizer", "gpt2"), "'tokenizer'"),
    "tokenizer without a name": (_set("tokenizer", {"n_vocab": 5}), "'tokenizer'"),
    "model_config a list": (_set("model_config", [1, 2, 3]), "'model_config'"),
    "train_config None": (_set("train_config", None), "'train_config'"),
    "lr a string": (_set("train_config/lr", "3e-3"), "lr"),
    "train_config an unknown key": (_set("train_config/rm_rf", 1), "rm_rf"),
    "rng missing": (_set("rng", KeyError), "'rng'"),
    "rng a string": (_set("rng", "seed"), "'rng'"),
    "rng's torch state too short": (_set("rng/0/torch", torch.zeros(3, dtype=torch.uint8)), "'rng'"),
    "optimizer a string": (_set("optimizer", "adam"), "'optimizer'"),
    "optimizer lr a string": (_set("optimizer/param_groups/0/lr", "fast"), "'optimizer'"),
    "optimizer without groups": (_set("optimizer/param_groups", []), "'optimizer'"),
    "scheduler a number": (_set("scheduler", 5), "'scheduler'"),
    "data a list of numbers": (_set("data", [5]), "'data'"),
    "data's generator state damaged": (_set("data/0/generator_state", torch.zeros(2, dtype=torch.uint8)), "'data'"),
    "step a string": (_set("step", "3"), "'step'"),
    "kind a number": (_set("kind", 7), "'kind'"),
    "trainer's best loss a string": (_set("trainer/best_val_loss", "low"), "'trainer'"),
    "model a list": (_set("model", [1]), "'model'"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FIELDS))
def test_resume_from_a_latest_pt_with_a_hostile_field_is_one_line(case, run_folder, tmp_path, capsys):
    common, out = run_folder
    edit, phrase = HOSTILE_FIELDS[case]
    run = shutil.copytree(out, tmp_path / "run")
    ckpt = load_checkpoint(run / "latest.pt")
    edit(ckpt)
    torch.save(ckpt, run / "latest.pt")
    before = (run / "latest.pt").read_bytes()
    capsys.readouterr()
    code = train.main([*common, "--out", str(run), "--resume", "--max-steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and phrase in err[0], err
    assert (run / "latest.pt").read_bytes() == before                  # nothing lost


@pytest.mark.parametrize("case", ["format_version a string", "tokenizer a string", "model_config a list",
                                  "step a string", "model a list"])
def test_load_model_checks_every_field_before_building(case, run_folder, tmp_path):
    _, out = run_folder
    edit, phrase = HOSTILE_FIELDS[case]
    ckpt = load_checkpoint(out / "latest.pt")
    edit(ckpt)
    atomic_save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=phrase) as info:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)
