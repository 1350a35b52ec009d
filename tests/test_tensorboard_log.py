"""train.py --tensorboard DIR: the metrics rows as TensorBoard events, read back from the event file; without
the optional tensorboard package it is one line and exit code 2 before any work."""

from __future__ import annotations

import json
import sys

import pytest
from training_helpers import write_corpus

import train
from training.run_log import RunLog, TensorBoardLog


def read_events(log_dir) -> tuple[dict, dict]:
    """Scalars {tag: [(step, value)]} and texts {tag: [text]} of every event file in log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    texts = {tag: [e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)]
             for tag in events.Tags()["tensors"]}
    return scalars, texts


def test_train_cli_writes_tensorboard_events_equal_to_the_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    corpus = write_corpus(tmp_path / "corpus")
    code = train.main(["--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"), "--cache-dir",
                       str(tmp_path / "cache"), "--batch-size", "4", "--max-steps", "3", "--eval-every", "2",
                       "--set", "sample_tokens=4", "--set", "log_every=1", "--quiet",
                       "--tensorboard", str(tmp_path / "tb")])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    scalars, texts = read_events(tmp_path / "tb")
    for tag, key in (("train/loss", "loss"), ("train/ce", "ce"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")):
        assert [step for step, _ in scalars[tag]] == [r["step"] for r in train_rows] == [1, 2, 3]
        assert [value for _, value in scalars[tag]] == pytest.approx([r[key] for r in train_rows], rel=1e-6)
    assert [v for _, v in scalars["load/max_ratio_layer0"]] == pytest.approx(
        [r["load_max_ratio"][0] for r in train_rows], rel=1e-6)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [s for s, _ in scalars["eval/val_loss"]] == [r["step"] for r in evals] == [2, 3]
    assert [v for _, v in scalars["eval/val_loss"]] == pytest.approx([r["val_loss"] for r in evals], rel=1e-6)
    assert "The best way to learn programming is" in texts["samples/text_summary"][0]
    whole = [r for r in rows if r["kind"] == "eval_whole"]        # the whole validation split, at the end
    assert [s for s, _ in scalars["eval_whole/val_loss"]] == [r["step"] for r in whole] == [3]
    assert scalars["eval_whole/val_loss"][0][1] == pytest.approx(whole[0]["val_loss"], rel=1e-6)


def test_tensorboard_sink_gets_every_row_and_survives_a_second_train_call(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    log = RunLog(None, quiet=True)
    log.sinks.append(TensorBoardLog(tmp_path))
    log.record({"kind": "train", "step": 1, "loss": 2.5, "load_max_ratio": [1.5, 1.25], "flag": True})
    log.close()
    log.record({"kind": "eval", "step": 2, "val_loss": 2.0})              # a second train() call
    log.close()
    scalars, _ = read_events(tmp_path)
    assert scalars == {"train/loss": [(1, 2.5)], "load/max_ratio_layer0": [(1, 1.5)],
                       "load/max_ratio_layer1": [(1, 1.25)], "eval/val_loss": [(2, 2.0)]}


def test_tensorboard_flag_without_the_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)                 # `import tensorboard` now fails
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data preparation started"))
    code = train.main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--max-steps", "1",
                       "--tensorboard", str(tmp_path / "tb")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == 'train.py: error: --tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()
