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
    "optimizer moments of the wrong shape": (lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
                                             "'optimizer'"),
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


# --- hangs: a one-line corpus splits in linear time; a FIFO is refused before it is opened ------------------------

def test_one_document_split_is_the_same_cut_as_before_and_linear():
    import random
    import time

    from data.split import _positions, _split_one

    def slow(text, val_fraction):          # the old rule: strip both halves at every candidate
        target = round(len(text) * (1.0 - val_fraction))
        for boundary in ("\n\n", "\n", " "):
            cuts = [i for i in _positions(text, boundary) if text[:i].strip() and text[i:].strip()]
            if cuts:
                cut = min(cuts, key=lambda i: abs(i - target))
                return text[:cut].rstrip(), text[cut:].lstrip()
        cut = min(max(target, 1), len(text) - 1)
        return text[:cut], text[cut:]

    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(["a", "b", " ", "\n", "\n\n", "\t"]) for _ in range(rng.randint(2, 30)))
        for fraction in (0.1, 0.5, 0.9):
            assert _split_one(text, fraction) == slow(text, fraction), (text, fraction)
    line = " ".join(rng.choice(["essay", "word", "a"]) for _ in range(1_000_000))   # ~6 MB, one line
    start = time.perf_counter()
    train_text, val_text = _split_one(line, 0.1)
    assert time.perf_counter() - start < 20            # quadratic: 400k words took 57 s
    assert train_text and val_text and len(train_text) + len(val_text) + 1 == len(line)


def test_a_fifo_as_data_is_refused_without_opening_it(tmp_path, capsys):
    import os

    fifo = tmp_path / "essays.txt"
    os.mkfifo(fifo)                                    # opening it for reading would block until a writer came
    code = train.main([*TRAIN, "--data", str(fifo), "--cache-dir", str(tmp_path / "cache"), "--out",
                       str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a regular file" in err[0], err
    assert not (tmp_path / "run").exists()             # the folder it created is gone again


# --- silent results: an empty path, a zero context, a PNG in a .txt, a cache holding foreign ids --------------

@pytest.mark.parametrize("flag", ["--out", "--data", "--cache-dir", "--tensorboard"])
def test_train_refuses_an_empty_path_instead_of_using_the_default(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        train.main(["--preset", "tiny", flag, ""])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty path" in err[0] and flag in err[0], err
    assert list(tmp_path.iterdir()) == []                      # no ./checkpoints


def test_ablation_context_length_0_is_refused_not_the_preset(capsys):
    from ablation.run import main as ablation_main

    assert ablation_main(["--tokens", "1000", "--context-length", "0", "--out", "never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--context-length 0" in err[0], err


def test_plot_writes_the_format_its_suffix_names_and_refuses_a_txt(run_folder, tmp_path, capsys):
    from figures.plotting import plot_cli

    _, out = run_folder
    assert plot_cli(["plot", str(out), "--out", str(tmp_path / "m.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".txt names no image format" in err[0] and ".png" in err[0], err
    assert not (tmp_path / "m.txt").exists()
    assert plot_cli(["plot", str(out), "--out", str(tmp_path / "m.svg")]) == 0
    assert b"<svg" in (tmp_path / "m.svg").read_bytes()[:2000]
    assert plot_cli(["plot", str(out), "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG")


def test_a_token_cache_with_ids_outside_the_vocabulary_is_rebuilt(tmp_path):
    import numpy as np

    from data import prepare_data

    corpus = write_corpus(tmp_path / "corpus", n_essays=4, words_per_essay=100)
    first = prepare_data(str(corpus), cache_dir=tmp_path / "cache", quiet=True)
    [cached] = list((tmp_path / "cache").glob("tokens-*-train.npy"))
    ids = np.load(cached)
    ids[3] = 60000                                              # no GPT-2 token has this id
    np.save(cached, ids)
    with pytest.warns(UserWarning, match="outside the tokenizer"):
        again = prepare_data(str(corpus), cache_dir=tmp_path / "cache", quiet=True)
    assert np.array_equal(again.train_ids, first.train_ids) and int(again.train_ids.max()) < 50257
    assert int(np.load(cached).max()) < 50257                   # the rebuilt entry replaced the bad one


# --- unbounded work and memory: estimated before allocation, or chunked ---------------------------------------

def test_build_memory_counts_the_rope_tables_and_refuses_a_huge_context(run_folder, tmp_path, monkeypatch):
    import dataclasses

    from components.config import ModelConfig
    from components.deepseek_model import DeepSeekModel
    from constants import TINY
    from utils import build_memory_bytes

    for cfg in (TINY, dataclasses.replace(TINY, attention="mha"), dataclasses.replace(TINY, context_length=4096)):
        model = DeepSeekModel(cfg)
        held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        assert held <= build_memory_bytes(cfg) <= held * 1.05       # the tables are counted, nothing much more
    _, out = run_folder
    ckpt = load_checkpoint(out / "latest.pt")
    ckpt["model_config"]["context_length"] = 10**9                  # few weights, 10**9-row RoPE tables
    atomic_save(ckpt, tmp_path / "long.pt")
    big = build_memory_bytes(ModelConfig.from_dict(ckpt["model_config"]))
    monkeypatch.setattr("training.checkpoint.available_memory", lambda: big - 1)
    with pytest.raises(CheckpointError, match="GiB of memory"):
        load_model(tmp_path / "long.pt")


def test_train_refuses_a_batch_whose_step_cannot_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    assert train.main(["--preset", "tiny", "--batch-size", "1000000000", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 1000000000" in err[0] and "GiB" in err[0], err
    assert not (tmp_path / "r").exists()


def test_ablation_refuses_a_batch_whose_step_cannot_fit_before_any_run(tmp_path, capsys):
    from ablation.run import main as ablation_main

    assert ablation_main(["--tokens", "64", "--batch-size", "1000000000", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 'base': a training step needs at least" in err[0], err
    assert not (tmp_path / "a").exists()


def test_a_long_prompts_file_runs_in_bounded_batches(run_folder, tmp_path, monkeypatch, capsys):
    import inference

    _, out = run_folder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(70)))
    sizes, real = [], inference.complete_batch

    def spy(model, tokenizer, chunk, *args, **kwargs):
        sizes.append(len(chunk))
        return real(model, tokenizer, chunk, *args, **kwargs)

    monkeypatch.setattr(inference, "complete_batch", spy)
    assert inference.main(["--model_path", str(out / "latest.pt"), "--prompts_file", str(prompts),
                           "--max_new_tokens", "1", "--temperature", "0"]) == 0
    assert sizes == [32, 32, 6]
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--- prompt ")]
    assert headers == [f"--- prompt {i}/70 ---" for i in range(1, 71)]


# --- records and notebooks: one line naming the file and what is wrong ----------------------------------------

RECORD_CASES = {
    "a record missing a field": (lambda r: r.pop("budget"), "has no 'budget'"),
    "a string loss": (lambda r: r.update(final_val_loss="low"), "'final_val_loss' is 'low'"),
    "a NaN loss": (lambda r: r.update(final_val_loss=float("nan")), "'final_val_loss' is nan"),
    "expert load of the wrong length": (lambda r: r["expert_load"]["final_max_ratio"].append(1.0), "'expert_load'"),
    "params a list": (lambda r: r.update(params=[1, 2]), "'params' is a list"),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_ablation_report_on_a_hostile_record_is_one_line(case, tmp_path, capsys):
    import json
    from pathlib import Path

    from ablation.report import main as report_main

    source = sorted(Path("docs/results/balancing").glob("*.json"))[0]
    record = json.loads(source.read_text())
    edit, phrase = RECORD_CASES[case]
    edit(record)
    (tmp_path / "r.json").write_text(json.dumps(record))
    assert report_main([str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r.json" in err[0] and phrase in err[0], err
    assert not (tmp_path / "report.md").exists()


def test_ablation_report_skips_a_folder_named_like_a_record(tmp_path, capsys):
    from pathlib import Path

    from ablation.report import main as report_main

    for source in sorted(Path("docs/results/balancing").glob("*.json")):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "r.json").mkdir()
    assert report_main([str(tmp_path), "--no-plots"]) == 0
    assert "r.json is not a file; skipped" in capsys.readouterr().err
    assert (tmp_path / "report.md").is_file()


def test_run_notebooks_reports_a_bad_notebook_a_raising_cell_and_a_timeout_in_one_line(tmp_path):
    import subprocess
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    def notebook(name, *sources):
        nb = new_notebook(cells=[new_code_cell(s) for s in sources])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / name)
        return tmp_path / name

    (tmp_path / "text.ipynb").write_text("{not json")
    cases = {notebook("raises.ipynb", "x = 1", "raise ValueError('boom')"): "cell 2 raised ValueError: boom",
             notebook("slow.ipynb", "import time; time.sleep(60)"): "cell 1 ran longer than --timeout 2 s",
             tmp_path / "text.ipynb": "is not a Jupyter notebook"}
    for path, phrase in cases.items():
        before = path.read_bytes()
        result = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--timeout", "2", str(path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
        assert result.stderr.strip().splitlines() == [f"run_notebooks.py: error: {result.stderr.split(': error: ')[1]}"
                                                      .strip()] and phrase in result.stderr, result.stderr
        assert path.read_bytes() == before                          # the committed outputs stay
    fine = notebook("fine.ipynb", "print(6 * 7)")
    result = subprocess.run([sys.executable, "scripts/run_notebooks.py", str(fine)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "42" in str(nbformat.read(fine, as_version=4).cells[0].outputs), result.stderr


# --- messages that blame the right thing ------------------------------------------------------------------------

def test_tensorboard_naming_a_file_blames_tensorboard_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    events = tmp_path / "events.txt"
    events.write_text("mine")
    assert train.main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--tensorboard", str(events)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--tensorboard {events} is a file" in err[0] and "--out" not in err[0], err
    assert events.read_text() == "mine" and not (tmp_path / "run").exists()


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("echo the payload ran",))


def test_a_plain_pickle_is_named_for_what_it_is_not_called_corrupt(tmp_path):
    import pickle

    evil, plain = tmp_path / "evil.pt", tmp_path / "plain.pt"
    evil.write_bytes(pickle.dumps({"payload": _System()}, protocol=4))
    plain.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert message.startswith(f"refused to load {evil} as unsafe") and "posix.system" in message
    assert "not a checkpoint this project wrote" in message and "corrupt" not in message
    with pytest.raises(CheckpointError, match="plain Python pickle .* not a checkpoint this project wrote"):
        load_checkpoint(plain)


# --- no writer follows a symlink it did not create --------------------------------------------------------------

def _plant(link, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    return victim


def test_a_checkpoint_save_replaces_a_planted_symlink_and_leaves_its_target(tmp_path):
    from training_helpers import tiny_cfg

    from components.deepseek_model import DeepSeekModel
    from training.checkpoint import make_checkpoint

    victim = _plant(tmp_path / "run" / "latest.pt", tmp_path)
    atomic_save(make_checkpoint(DeepSeekModel(tiny_cfg()), step=0, kind="best"), tmp_path / "run" / "latest.pt")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "run" / "latest.pt").is_symlink() and load_checkpoint(tmp_path / "run" / "latest.pt")


@pytest.mark.parametrize("fresh", [True, False])
def test_metrics_jsonl_is_never_written_through_a_symlink(fresh, tmp_path):
    from training.run_log import RunLog

    victim = _plant(tmp_path / "metrics.jsonl", tmp_path)
    log = RunLog(tmp_path / "metrics.jsonl", quiet=True, fresh=fresh)
    with pytest.raises(OSError, match="symbolic link"):
        log.record({"kind": "train", "step": 1})
    log.keep_until(0)                            # the rewrite after a resume replaces the link instead
    assert victim.read_text() == "precious" and not (tmp_path / "metrics.jsonl").is_symlink()


@pytest.mark.parametrize("name", ["latest.pt", "best_model.pt", "metrics.jsonl"])
def test_train_refuses_an_out_folder_with_a_planted_symlink(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    victim = _plant(tmp_path / "run" / name, tmp_path)
    assert train.main(["--preset", "tiny", "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name} is a symbolic link" in err[0], err
    assert victim.read_text() == "precious" and (tmp_path / "run" / name).is_symlink()


def test_the_hf_export_replaces_planted_symlinks(run_folder, tmp_path):
    from hugging_face.__main__ import main as hf_main

    _, out = run_folder
    victims = []
    for name in ("config.json", "model.safetensors", "README.md"):
        (tmp_path / name).mkdir()                        # a victim of its own per link
        victims.append(_plant(tmp_path / "hf" / name, tmp_path / name))
    assert hf_main(["to-hf", str(out / "latest.pt"), str(tmp_path / "hf"), "--force"]) == 0
    assert all(v.read_text() == "precious" for v in victims)
    assert not any((tmp_path / "hf" / n).is_symlink() for n in ("config.json", "model.safetensors", "README.md"))


def test_the_release_refuses_an_out_dir_that_is_a_symlink(tmp_path, capsys):
    from exercises.release import main as release_main

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "release").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for link in ("release", "dangling"):
        with pytest.raises(SystemExit) as info:
            release_main([str(tmp_path / link)])
        assert info.value.code == 2 and "is a symbolic link" in capsys.readouterr().err
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not (tmp_path / "nowhere").exists()
