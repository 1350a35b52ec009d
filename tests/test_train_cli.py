"""train.py: typed --set overrides, one-line exit-2 errors before any work, an end-to-end tiny run, --resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import write_corpus

import train
from constants import PRESETS, TINY
from data import prepare_data
from trainer import TrainConfig, evaluate
from training.checkpoint import load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_parse_sets_types_values_by_field():
    model, training = train.parse_sets(["top_k=1", "attention=mha", "capacity_factor=1.25", "q_latent_dim=None",
                                        "tie_embeddings=false", "warmup_steps=50", "betas=0.9,0.99",
                                        "sample_prompts=Hello, world|Startups are", "grad_clip=none"])
    assert model == {"top_k": 1, "attention": "mha", "capacity_factor": 1.25, "q_latent_dim": None,
                     "tie_embeddings": False}
    assert training == {"warmup_steps": 50, "betas": (0.9, 0.99), "sample_prompts": ("Hello, world", "Startups are"),
                        "grad_clip": None}


def test_default_run_is_small_for_ten_minutes_and_budget_flags_replace_it():
    model, training, _ = train.resolve_configs(train.build_parser().parse_args([]))
    assert model == PRESETS["small"] and training.out_dir == "checkpoints"
    assert (training.max_steps, training.epochs, training.time_budget_min) == (None, None, 10.0)
    _, training, _ = train.resolve_configs(train.build_parser().parse_args(["--max-steps", "500", "--lr", "3e-4"]))
    assert (training.max_steps, training.epochs, training.time_budget_min, training.lr) == (500, None, None, 3e-4)


@pytest.mark.parametrize("argv, message", [
    (["--set", "topk=1"], r"--set topk: unknown key; known keys: vocab_size, "),
    (["--set", "top_k=two"], r"--set top_k=two: expects an integer, got 'two'"),
    (["--set", "top_k"], r"--set 'top_k': expected KEY=VALUE"),
    (["--set", "top_k=9"], r"ModelConfig\.top_k=9: must be <= n_routed_experts=4"),
    (["--set", "attention=flash"], r"ModelConfig\.attention='flash': choose one of"),
    (["--set", "d_model=None"], r"--set d_model=None: expects an integer"),
    (["--lr", "-1"], r"TrainConfig\.lr=-1\.0: must be a finite number > 0"),
    (["--time-budget", "0"], r"TrainConfig\.max_steps=None: set at least one budget"),
    (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--batch-size", "0"],
     r"error: "),
    (["--resume", "--out", "/nonexistent/run"], r"--resume: no checkpoint at /nonexistent/run/latest\.pt"),
])
def test_bad_settings_fail_fast_with_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data preparation started before the settings were checked")

    monkeypatch.setattr("train.prepare_data", no_data)
    assert train.main(["--preset", "tiny", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), captured.err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert captured.out == ""


def test_bad_settings_exit_2_from_the_shell(tmp_path):
    result = run_cli("--preset", "tiny", "--set", "no_such_key=1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown key" in result.stderr
    assert not list(tmp_path.iterdir())                   # nothing written


def test_tiny_run_end_to_end_then_resume(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    common = ["--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"), "--cache-dir",
              str(tmp_path / "cache"), "--batch-size", "4", "--set", "sample_tokens=8", "--set", "eval_batches=1"]
    result = run_cli(*common, "--max-steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("model (tiny):") and "train:" in out and "max_steps=3" in out
    assert "time_budget_min=None" in out
    assert "done: 3 steps (max_steps)" in out and "final val loss" in out and "best val loss" in out
    # the final model on the whole validation split, evaluated again here from the saved weights
    whole = re.search(r"final model on the whole validation split \(([\d,]+) tokens\): val loss ([\d.]+)", out)
    assert whole, out[-2000:]
    model, _ = load_model(tmp_path / "run" / "latest.pt")
    val_ids = prepare_data(str(corpus), context_length=TINY.context_length, cache_dir=tmp_path / "cache",
                           quiet=True).val_ids
    expected = evaluate(model, val_ids, batch_size=4, context_length=TINY.context_length, max_batches=None,
                        device=torch.device("cpu"))["val_loss"]
    assert abs(float(whole.group(2)) - expected) < 5e-4      # printed to 4 decimals
    assert (len(val_ids) - 1) // TINY.context_length > 4     # more windows than the one batch of 4 evaluated
    assert int(whole.group(1).replace(",", "")) == (len(val_ids) - 1) // TINY.context_length * TINY.context_length
    assert "--- The best way to learn programming is" in out            # the samples come last
    # the warmup printed is the one used: warmup_steps=100 capped at 10% of the 3-step horizon
    assert "lr schedule: warmup 0 steps (warmup_steps=100 capped at 10% of the horizon), cosine to" in out
    run = tmp_path / "run"
    # the whole-split loss is also a metrics row and in best_model.json (the best weights are the final ones)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    whole_rows = [row for row in rows if row["kind"] == "eval_whole"]
    assert len(whole_rows) == 1 and whole_rows[0]["step"] == 3
    assert abs(whole_rows[0]["val_loss"] - expected) < 1e-6
    assert whole_rows[0]["val_tokens"] == int(whole.group(1).replace(",", ""))
    best_meta = json.loads((run / "best_model.json").read_text())
    assert best_meta["step"] == 3 and abs(best_meta["trainer"]["whole_val_loss"] - expected) < 1e-6
    assert load_checkpoint(run / "best_model.pt")["trainer"]["whole_val_loss"] == best_meta["trainer"]["whole_val_loss"]
    model, meta = load_model(run / "best_model.pt")
    assert model.cfg == TINY and meta["kind"] == "best"
    assert load_checkpoint(run / "latest.pt")["step"] == 3 and (run / "metrics.jsonl").is_file()
    assert TrainConfig.from_dict(meta["train_config"]).max_steps == 3
    # --resume keeps the checkpoint's settings, applies the flags given now, and continues the count
    result = run_cli(*common, "--max-steps", "5", "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "done: 5 steps (max_steps)" in result.stdout
    assert load_checkpoint(run / "latest.pt")["step"] == 5
    result = run_cli(*common, "--resume", "--set", "top_k=1", cwd=tmp_path)
    assert result.returncode == 2 and "different model (top_k differ)" in result.stderr


def test_non_finite_training_exits_1_with_one_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    code = train.main(["--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"), "--cache-dir",
                       str(tmp_path / "cache"), "--max-steps", "3", "--quiet", "--set", "init_std=1e30"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("train.py: non-finite loss/gradient at step 1")
    assert not (tmp_path / "run" / "latest.pt").exists()               # nothing half-trained was saved
