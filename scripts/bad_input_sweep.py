"""Run every bad input we know of through the real command lines and report any Python traceback.

    python scripts/bad_input_sweep.py            # several minutes on a laptop CPU; no PYTHONPATH needed
    python scripts/bad_input_sweep.py -k lock    # only the cases whose name contains 'lock'

Each case is a subprocess of train.py, inference.py or `python -m ablation` (a few run a short Python
wrapper that simulates what a test machine cannot produce: a full disk, a read-only folder when running
as root). Where the machine allows it (root, `mount -t tmpfs` permitted) a REAL 1 MB tmpfs is the full disk
as well: the patched case alone could not see torch.save's own error on a full disk (issue 24).
A case passes when its exit code is the expected one, stderr holds no traceback, and its own
check holds (files that existed are unchanged, no empty folder was left, the message names the fix).
The project rule it checks: a bad input gets one line naming the problem and the fix, before any work
starts, and nothing that existed is lost. Everything happens in a temporary folder, offline, on CPU.
The last line is the summary; the exit code is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))       # before the project's imports: `python scripts/bad_input_sweep.py` from anywhere

from components.deepseek_model import DeepSeekModel  # noqa: E402
from constants import TINY  # noqa: E402
from hugging_face.convert import export_hf  # noqa: E402
from training.checkpoint import atomic_save, load_checkpoint, make_checkpoint  # noqa: E402

ENV = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
WORDS = ("startup founders users money ideas work programming language hackers growth product investors write "
         "essays think hard problems make something people want good great best way learn").split()


@dataclasses.dataclass
class Case:
    name: str
    argv: list                                   # after the Python executable
    codes: tuple = (2,)                          # acceptable exit codes
    stdin: bytes | None = None
    env: dict = dataclasses.field(default_factory=dict)
    check: Callable | None = None                # (stdout, stderr) -> problem or None
    interact: Callable | None = None             # (Popen) -> (stdout, stderr), for signals


@dataclasses.dataclass
class Result:
    case: Case
    code: int | None
    problem: str | None
    first_line: str


# --- fixtures: data, checkpoints, folders -------------------------------------------------------------------

def write_corpus(folder: Path, n: int = 12) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(400)]
        text = " ".join(" ".join(words[j:j + 12]).capitalize() + "." for j in range(0, 400, 12))
        (folder / f"essay_{i:02d}.txt").write_text(f"Essay {i}\n\n{text}\n")
    return folder


def make_checkpoints(tmp: Path) -> dict[str, Path]:
    import torch

    cfg = dataclasses.replace(TINY, n_layers=1, context_length=32, d_model=32, kv_latent_dim=8, expert_hidden_dim=32)
    torch.manual_seed(0)
    paths = {name: tmp / f"{name}.pt" for name in ("good", "small_vocab", "huge", "nan", "evil", "empty", "cut")}
    atomic_save(make_checkpoint(DeepSeekModel(cfg), step=0, kind="best"), paths["good"])
    atomic_save(make_checkpoint(DeepSeekModel(dataclasses.replace(cfg, vocab_size=256)), step=0, kind="best"),
                paths["small_vocab"])
    huge = load_checkpoint(paths["good"])
    huge["model_config"] |= {"d_model": 65536, "n_layers": 96, "expert_hidden_dim": 65536}
    torch.save(huge, paths["huge"])
    bad = load_checkpoint(paths["good"])
    bad["model"]["norm.weight"][0] = float("nan")
    torch.save(bad, paths["nan"])

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo the payload ran",))

    torch.save({"format_version": 1, "payload": RunsCode()}, paths["evil"])
    paths["empty"].write_bytes(b"")
    paths["cut"].write_bytes(paths["good"].read_bytes()[:2000])
    return paths


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def unchanged(folder: Path) -> Callable:
    before = snapshot(folder)
    return lambda out, err: None if snapshot(folder) == before else f"{folder} changed"


def absent(path: Path) -> Callable:
    return lambda out, err: f"{path} was created" if path.exists() else None


def says(*texts: str, where: str = "err") -> Callable:
    def check(out, err):
        text = err if where == "err" else out
        missing = [t for t in texts if t not in text]
        return f"{where} lacks {missing}" if missing else None
    return check


def both(*checks: Callable) -> Callable:
    def check(out, err):
        return next((problem for c in checks if (problem := c(out, err))), None)
    return check


# --- wrappers that simulate what this machine cannot do for real ---------------------------------------------

FULL_DISK = """
import errno, os, sys, torch
real, calls = torch.save, [0]
def save(obj, handle, *a, **k):                       # the first save fits, then the disk is full
    calls[0] += 1
    if calls[0] > 1:
        handle.write(b"PK half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(obj, handle, *a, **k)
torch.save = save
import train
sys.exit(train.main(sys.argv[1:]))
"""

READ_ONLY = """
import errno, os, sys
folder, real = sys.argv[1], os.open
def refusing(path, flags, *a, **k):                   # what the kernel says to a non-root user in a 0555 folder
    if str(path).startswith(folder) and flags & os.O_CREAT:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return real(path, flags, *a, **k)
if os.geteuid() == 0:
    os.open = refusing
import train
sys.exit(train.main(sys.argv[2:]))
"""



# --- signals --------------------------------------------------------------------------------------------------

def wait_for(proc: subprocess.Popen, prefix: bytes, limit: float = 120) -> bytes:
    """Read stdout lines until one starts with `prefix` (the process has reached that point)."""
    seen, deadline = b"", time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if not line or line.startswith(prefix):
            return seen
    return seen


def sigint_while_generating(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    head = wait_for(proc, b"interactive mode")
    proc.stdin.write(b"Hello\n")
    proc.stdin.flush()
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    out, err = proc.communicate(b":quit\n", timeout=120)
    return head + out, err


def sigint_at_the_prompt(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    head = wait_for(proc, b"interactive mode")
    time.sleep(0.5)                                  # blocked in input()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return head + out, err


def sigint_one_shot(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    head = wait_for(proc, b"loaded ")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return head + out, err


# --- the cases --------------------------------------------------------------------------------------------------

def real_small_disk(tmp: Path) -> Path | None:
    """A real 1 MB tmpfs where the machine allows it (root, mount permitted), else None (the patched full-disk
    case still runs)."""
    point = tmp / "small_disk"
    point.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True)
    return point if done.returncode == 0 else None


def hf_cases(tmp: Path, checkpoint: Path) -> list[Case]:
    """Hostile Hugging Face directories, made from an export of a good checkpoint."""
    good = tmp / "hf_good"
    export_hf(checkpoint, good)
    (tmp / "elsewhere").mkdir()
    shutil.copy(good / "model.safetensors", tmp / "elsewhere" / "x.safetensors")
    cases = []

    def variant(name: str, change: Callable, phrase: str) -> None:
        folder = tmp / f"hf_{len(cases)}"
        shutil.copytree(good, folder)
        change(folder)
        cases.append(Case(f"from-hf: {name}", ["-m", "hugging_face", "from-hf", str(folder), str(tmp / "hf.pt")],
                          check=both(says(phrase), absent(tmp / "hf.pt"))))

    def config(**changes):
        def change(folder: Path) -> None:
            values = json.loads((folder / "config.json").read_text())
            values.update(changes)
            (folder / "config.json").write_text(json.dumps(values))
        return change

    def index(target: str):
        def change(folder: Path) -> None:
            weight_map = {"model.embed_tokens.weight": target}
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return change

    variant("config is a list", lambda f: (f / "config.json").write_text("[]"), "not an object")
    variant("rope_parameters a string", config(rope_parameters="yarn"), "must be an object")
    variant("hidden_size a string", config(hidden_size="64"), "must be an integer")
    variant("index without weight_map", lambda f: (f / "model.safetensors.index.json").write_text("{}"),
            "no weight_map")
    variant("shard index pointing outside (../)", index("../elsewhere/x.safetensors"), "outside the model directory")
    variant("corrupt model.safetensors", lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00garbage"),
            "not a readable weights file")
    return cases


def resumable_run(tmp: Path, train: list) -> Path:
    """A real one-step run (its latest.pt, metrics.jsonl and token cache): what the hostile variants copy."""
    out = tmp / "resumable"
    subprocess.run([sys.executable, *train, "--max-steps", "1", "--save-every", "1", "--out", str(out)], cwd=REPO,
                   env=ENV, capture_output=True, timeout=300, check=True)
    return out


def later_cases(tmp: Path, train: list, infer: list, corpus: Path) -> list[Case]:
    """Issue 24's remaining classes: hostile checkpoint fields, unbounded work, hangs, silent results, records
    and notebooks, messages that blame the wrong thing, planted symlinks."""
    import numpy as np
    import torch

    run = resumable_run(tmp, train)
    cases = []

    def latest_variant(name: str, edit: Callable, phrase: str) -> None:
        folder = tmp / f"resume_{len(cases)}"
        shutil.copytree(run, folder)
        ckpt = torch.load(folder / "latest.pt", weights_only=True)
        edit(ckpt)
        torch.save(ckpt, folder / "latest.pt")
        cases.append(Case(f"train --resume: latest.pt with {name}", [*train, "--out", str(folder), "--resume",
                                                                       "--max-steps", "3"],
                          check=both(says(phrase), unchanged(folder))))

    def put(key: str, value):
        def edit(ckpt):
            *parents, last = key.split("/")
            holder = ckpt
            for part in parents:
                holder = holder[int(part) if isinstance(holder, list) else part]
            if value is KeyError:
                del holder[last]
            else:
                holder[int(last) if isinstance(holder, list) else last] = value
        return edit

    latest_variant("format_version a string", put("format_version", "1"), "'format_version'")
    latest_variant("tokenizer a string", put("tokenizer", "gpt2"), "'tokenizer'")
    latest_variant("a config that is a list", put("model_config", [1, 2]), "'model_config'")
    latest_variant("train_config None", put("train_config", None), "'train_config'")
    latest_variant("lr a string", put("train_config/lr", "3e-3"), "TrainConfig.lr")
    latest_variant("rng missing", put("rng", KeyError), "'rng'")
    latest_variant("a short torch RNG state", put("rng/0/torch", torch.zeros(3, dtype=torch.uint8)), "'rng'")
    latest_variant("optimizer a string", put("optimizer", "adam"), "'optimizer'")
    latest_variant("optimizer without groups", put("optimizer/param_groups", []), "'optimizer'")
    latest_variant("optimizer moments of the wrong shape",
                   lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)), "'optimizer'")
    latest_variant("scheduler a number", put("scheduler", 5), "'scheduler'")
    latest_variant("data a list of numbers", put("data", [5]), "'data'")
    latest_variant("step a string", put("step", "3"), "'step'")

    def saved(name: str, edit: Callable) -> Path:
        ckpt = torch.load(run / "latest.pt", weights_only=True)
        edit(ckpt)
        torch.save(ckpt, tmp / name)
        return tmp / name

    import pickle

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo the payload ran",))

    (tmp / "raw_pickle.pt").write_bytes(pickle.dumps({"payload": RunsCode()}, protocol=4))
    long_context = saved("long_context.pt", put("model_config/context_length", 10**12))
    cases += [
        Case("inference: a checkpoint whose config is a list",
             ["inference.py", "--model_path", str(saved("list_config.pt", put("model_config", [1])))], codes=(1,),
             check=says("'model_config'")),
        Case("inference: a raw pickle calling os.system", ["inference.py", "--model_path", str(tmp / "raw_pickle.pt")],
             codes=(1,), check=both(says("plain Python pickle", "system"),
                                    lambda o, e: "the payload ran" if "payload ran" in o else None)),
    ]
    # unbounded work and memory
    hf = tmp / "hf_rope"
    export_hf(run / "latest.pt", hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 10**12}))
    many = tmp / "many_prompts.txt"
    many.write_text("".join(f"Prompt number {i}\n" for i in range(1000)))
    cases += [
        Case("train: --batch-size 1000000000", [*train, "--batch-size", "1000000000", "--out", str(tmp / "t24b")],
             check=both(says("GiB"), absent(tmp / "t24b"))),
        Case("ablation: --batch-size 1000000000", ["-m", "ablation", "--tokens", "64", "--data", str(corpus),
                                                   "--batch-size", "1000000000", "--out", str(tmp / "a24b")],
             check=both(says("GiB"), absent(tmp / "a24b"))),
        Case("inference: context_length 10**12 (RoPE tables)", ["inference.py", "--model_path", str(long_context)],
             codes=(1,), check=says("GiB")),
        Case("from-hf: max_position_embeddings 10**12", ["-m", "hugging_face", "from-hf", str(hf),
                                                         str(tmp / "hf_rope.pt")],
             check=both(says("RoPE tables"), absent(tmp / "hf_rope.pt"))),
        Case("inference: a 1,000-line prompts file", ["inference.py", "--model_path", str(run / "latest.pt"),
                                                      "--prompts-file", str(many), "--max_new_tokens", "1",
                                                      "--temperature", "0"], codes=(0,),
             check=says("--- prompt 1000/1000 ---", where="out")),
    ]
    # hangs
    fifo = tmp / "essays_fifo.txt"
    os.mkfifo(fifo)
    one_line = tmp / "one_line.txt"
    rng = random.Random(1)
    one_line.write_text(" ".join(rng.choice(WORDS) for _ in range(600_000)))     # ~4 MB on one line
    cases += [
        Case("train: a FIFO as --data", [*train[:3], "--data", str(fifo), *train[5:], "--out", str(tmp / "t24f")],
             check=both(says("not a regular file"), absent(tmp / "t24f"))),
        Case("inference: a FIFO as --prompts-file", [*infer, "--prompts-file", str(fifo)],
             check=says("not a regular file")),
        Case("train: a 600k-word one-line file (linear split)", [*train[:3], "--data", str(one_line), *train[5:],
                                                                  "--max-steps", "1", "--out", str(tmp / "t24l")],
             codes=(0,)),
    ]
    # other silent results
    bad_cache = tmp / "bad_cache"
    shutil.copytree(tmp / "cache", bad_cache)
    for path in bad_cache.glob("tokens-*-train.npy"):
        ids = np.load(path)
        ids[0] = 60000
        np.save(path, ids)
    cases += [
        Case('train: --out ""', [*train, "--out", ""], check=both(says("empty path"), absent(REPO / "checkpoints"))
             if not (REPO / "checkpoints").exists() else says("empty path")),
        Case("ablation: --context-length 0", ["-m", "ablation", "--tokens", "64", "--data", str(corpus),
                                              "--context-length", "0", "--out", str(tmp / "a24")],
             check=both(says("--context-length 0"), absent(tmp / "a24"))),
        Case("trainer plot: --out m.txt", ["-m", "trainer", "plot", str(run), "--out", str(tmp / "m.txt")],
             check=both(says("names no image format"), absent(tmp / "m.txt"))),
        Case("train: a token cache with ids outside the vocabulary", [*train[:5], "--cache-dir", str(bad_cache),
                                                                      *train[7:], "--out", str(tmp / "t24c")],
             codes=(0,), check=says("outside the tokenizer")),
    ]
    # records and notebooks
    record = json.loads(next(iter(sorted((REPO / "docs" / "results" / "balancing").glob("*.json")))).read_text())
    for name, change in {"missing a field": lambda r: r.pop("budget"), "a string loss": lambda r: r.update(
            final_val_loss="low"), "a NaN loss": lambda r: r.update(final_val_loss=float("nan"))}.items():
        folder = tmp / f"records_{len(cases)}"
        folder.mkdir()
        edited = json.loads(json.dumps(record))
        change(edited)
        (folder / "r.json").write_text(json.dumps(edited))
        cases.append(Case(f"ablation report: a record {name}", ["-m", "ablation", "report", str(folder),
                                                                  "--no-plots"], check=says("r.json")))
    folder = tmp / "records_dir"
    folder.mkdir()
    (folder / "r.json").mkdir()
    (folder / "good.json").write_text(json.dumps(record))
    cases.append(Case("ablation report: a folder named r.json", ["-m", "ablation", "report", str(folder),
                                                                  "--no-plots"], codes=(0,), check=says("not a file")))
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    (notebooks / "text.ipynb").write_text("{not json")
    for name, source in {"raises": "raise ValueError('boom')", "slow": "import time; time.sleep(60)"}.items():
        (notebooks / f"{name}.ipynb").write_text(json.dumps({
            "cells": [{"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}))
    for name, phrase in {"text": "not a Jupyter notebook", "raises": "raised ValueError", "slow": "--timeout"}.items():
        cases.append(Case(f"run_notebooks: {name}.ipynb", ["scripts/run_notebooks.py", "--timeout", "3",
                                                            str(notebooks / f"{name}.ipynb")], codes=(1,),
                          check=both(says(phrase), unchanged(notebooks))))
    # messages that blame the right thing, and planted symlinks
    events = tmp / "events.txt"
    events.write_text("mine")
    victim = tmp / "victim24" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    metrics_link = tmp / "metrics_link"
    shutil.copytree(run, metrics_link)
    (metrics_link / "metrics.jsonl").unlink()
    (metrics_link / "metrics.jsonl").symlink_to(victim)
    hf_links, hf_victim = tmp / "hf_links", tmp / "victim_hf" / "precious.txt"    # a victim of its own per case
    hf_links.mkdir()
    hf_victim.parent.mkdir()
    hf_victim.write_text("precious")
    for name in ("config.json", "model.safetensors", "README.md"):
        (hf_links / name).symlink_to(hf_victim)
    (tmp / "release_link").symlink_to(tmp / "nowhere")
    cases += [
        Case("train: --tensorboard naming a file", [*train, "--tensorboard", str(events), "--out", str(tmp / "t24t")],
             check=both(says("--tensorboard"), absent(tmp / "t24t"),
                        lambda o, e: "blames --out" if "--out" in e else None)),
        Case("train: a metrics.jsonl symlink in --out", [*train, "--out", str(metrics_link), "--overwrite"],
             check=both(says("symbolic link"), unchanged(victim.parent))),
        Case("to-hf: planted symlinks in the export folder", ["-m", "hugging_face", "to-hf", str(run / "latest.pt"),
                                                              str(hf_links), "--force"], codes=(0,),
             check=unchanged(hf_victim.parent)),
        Case("release: OUT_DIR a dangling symlink", ["-m", "exercises", "release", str(tmp / "release_link")],
             check=both(says("symbolic link"), absent(tmp / "nowhere"))),
    ]
    return cases


def build_cases(tmp: Path) -> list[Case]:
    corpus = write_corpus(tmp / "corpus")
    ckpt = make_checkpoints(tmp)
    cache = ["--cache-dir", str(tmp / "cache")]
    # a short budget everywhere: an input that is wrongly accepted trains 2 steps and is reported, not 10 minutes
    train = ["train.py", "--preset", "tiny", "--data", str(corpus), *cache, "--quiet", "--batch-size", "2",
             "--max-steps", "2", "--eval-every", "0", "--set", "sample_tokens=0", "--set", "eval_batches=1"]
    infer = ["inference.py", "--model_path", str(ckpt["good"]), "--max_new_tokens", "4"]
    ablate = ["-m", "ablation", "--tokens", "64", *cache]

    victim = tmp / "victim" / "precious.txt"             # what a planted .lock link points at
    victim.parent.mkdir()
    victim.write_text("not a lock")
    linked = tmp / "linked_out"
    linked.mkdir()
    (linked / ".lock").symlink_to(victim)
    small_disk = real_small_disk(tmp)
    a_file = tmp / "a_file.txt"
    a_file.write_text("my notes")
    earlier = tmp / "earlier_run"
    earlier.mkdir()
    (earlier / "metrics.jsonl").write_text('{"kind": "train", "step": 7}\n')
    (earlier / "latest.pt").write_bytes(b"an earlier run's checkpoint")
    read_only = tmp / "read_only"
    read_only.mkdir()
    (read_only / "keep.txt").write_text("kept")
    read_only.chmod(0o555)
    no_text_column = tmp / "no_text.csv"
    no_text_column.write_text("title,body\nA,some words\n")
    too_small = tmp / "too_small.csv"
    too_small.write_text("text\nOnly a few words here.\n")
    binary = tmp / "binary.parquet"
    binary.write_bytes(bytes(range(256)) * 4)
    prompts = tmp / "prompts.txt"
    prompts.write_text("Startups are\n\nThe best way to learn programming is\n")
    latin1 = os.fsdecode(b"caf\xe9 au lait")
    strict = {"PYTHONIOENCODING": "utf-8:strict"}

    return [
        # train.py: settings
        Case("train: --device tpu", [*train, "--out", str(tmp / "t1"), "--device", "tpu"],
             check=both(says("--device tpu: unknown device"), absent(tmp / "t1"))),
        Case("train: --device meta", [*train, "--out", str(tmp / "t1"), "--device", "meta"],
             check=says("runs on cpu, cuda or mps")),
        Case("train: --device cuda:99", [*train, "--out", str(tmp / "t1"), "--device", "cuda:99"]),
        Case("train: vocab_size below the tokenizer's ids", [*train, "--out", str(tmp / "t1"), "--set",
                                                            "vocab_size=1000"],
             check=both(says("vocab_size >= 50257"), absent(tmp / "t1"))),
        Case("train: mtp_depth >= context_length", [*train, "--out", str(tmp / "t1"), "--set", "mtp_depth=64"],
             check=says("must be < context_length=64")),
        Case("train: aux_free with a balance coefficient", [*train, "--out", str(tmp / "t1"), "--set",
                                                           "seq_balance_coef=0.001"],
             check=says("use balancing='both'")),
        Case("train: a bad --set value", [*train, "--out", str(tmp / "t1"), "--set", "top_k=two"]),
        # train.py: the output folder
        Case("train: --out is a file", [*train, "--out", str(a_file)],
             check=both(says("is a file, not a folder"), lambda o, e: None if a_file.read_text() == "my notes"
                        else "the file changed")),
        Case("train: --out below a file", [*train, "--out", str(a_file / "run")], check=says("--out")),
        Case("train: read-only --out", ["-c", READ_ONLY, str(read_only), *train[1:], "--out", str(read_only)],
             check=both(says("is not writable"), unchanged(read_only))),
        Case("train: --out /proc (not creatable)", [*train, "--out", "/proc/no_such_run"]),
        Case("train: fresh run into an earlier run", [*train, "--out", str(earlier)],
             check=both(says("holds an earlier run", "--overwrite"), unchanged(earlier))),
        Case("train: --resume and --overwrite", [*train, "--out", str(earlier), "--resume", "--overwrite"],
             check=both(says("pass one of them"), unchanged(earlier))),
        Case("train: --overwrite, then bad data", [*train[:3], "--data", str(no_text_column), *cache,
                                                    "--out", str(earlier), "--overwrite"],
             check=both(says("no 'text' column"), unchanged(earlier))),
        Case("train: --resume of a corrupt latest.pt", [*train, "--out", str(earlier), "--resume"],
             check=both(says("--resume:"), unchanged(earlier))),
        Case("train: data without a text column", [*train[:3], "--data", str(no_text_column), *cache,
                                                    "--out", str(tmp / "t2")], check=absent(tmp / "t2")),
        Case("train: data that is binary garbage", [*train[:3], "--data", str(binary), *cache,
                                                     "--out", str(tmp / "t2")], check=absent(tmp / "t2")),
        Case("train: full disk while saving", ["-c", FULL_DISK, *train[1:], "--out", str(tmp / "full"),
                                               "--max-steps", "3", "--save-every", "1"], codes=(1,),
             check=says("No space left on device", "(step 1)", "--resume")),
        # issue 24: non-finite and overflowing numbers, hostile HF directories, symlinks, a real full disk
        *[Case(f"train: {' '.join(flags)}", [*train, *flags, "--out", str(tmp / "t24")], check=absent(tmp / "t24"))
          for flags in (["--epochs", "inf"], ["--time-budget", "inf"], ["--set", "capacity_factor=inf"],
                        ["--set", "bias_update_rate=inf"], ["--set", "rope_theta=nan"], ["--set", "norm_eps=-1"],
                        ["--set", "weight_decay=inf"], ["--seed", str(2**70)])],
        *[Case(f"inference: {' '.join(flags)}", [*infer, *flags], check=says(flags[0].lstrip("-")))
          for flags in (["--temperature", "1e-320"], ["--presence_penalty", "1e308"], ["--beams", "100000"],
                        ["--num_samples", "1000000"])],
        *hf_cases(tmp, ckpt["good"]),
        *later_cases(tmp, train, infer, corpus),
        Case("train: a .lock in --out that is a symlink", [*train, "--out", str(linked)], codes=(1, 2),
             check=both(says("symbolic link"), unchanged(victim.parent))),
        *([Case("train: a REAL full disk (1 MB tmpfs)", [*train, "--out", str(small_disk)], codes=(1,),
                check=says("No space left on device"))] if small_disk else []),
        Case("train: non-finite loss", [*train, "--out", str(tmp / "nan_run"), "--max-steps", "3",
                                        "--set", "init_std=1e30"], codes=(1,), check=says("non-finite loss")),
        # python -m ablation
        Case("ablation: data without a text column", [*ablate, "--data", str(no_text_column), "--out",
                                                      str(tmp / "a1")], check=absent(tmp / "a1")),
        Case("ablation: data smaller than one window", [*ablate, "--data", str(too_small), "--out", str(tmp / "a1")],
             check=both(says("at least one window"), absent(tmp / "a1"))),
        Case("ablation: --out is a file", [*ablate, "--data", str(corpus), "--out", str(a_file)],
             check=says("is a file, not a folder")),
        Case("ablation: --out below a file", [*ablate, "--data", str(corpus), "--out", str(a_file / "study")]),
        Case("ablation: bad --grid", [*ablate, "--grid", "top_k=1,9", "--out", str(tmp / "a1")],
             check=absent(tmp / "a1")),
        # inference.py: flags and checkpoints
        Case("inference: --device tpu", [*infer, "--device", "tpu"], check=says("unknown device")),
        Case("inference: --prompts-file missing", [*infer, "--prompts-file", str(tmp / "none.txt")]),
        Case("inference: --prompts-file is a folder", [*infer, "--prompts-file", str(tmp)]),
        Case("inference: a pickle calling os.system", ["inference.py", "--model_path", str(ckpt["evil"])], codes=(1,),
             check=both(says("as unsafe"), lambda o, e: "the payload ran" if "payload ran" in o else None)),
        Case("inference: config of an enormous model", ["inference.py", "--model_path", str(ckpt["huge"])],
             codes=(1,), check=says("describes a model of")),
        Case("inference: non-finite weights", ["inference.py", "--model_path", str(ckpt["nan"])], codes=(1,),
             check=says("norm.weight")),
        Case("inference: empty checkpoint", ["inference.py", "--model_path", str(ckpt["empty"])], codes=(1,)),
        Case("inference: truncated checkpoint", ["inference.py", "--model_path", str(ckpt["cut"])], codes=(1,)),
        Case("inference: a folder as --model_path", ["inference.py", "--model_path", str(tmp)], codes=(1,)),
        Case("inference: prompt ids outside a small vocabulary",
             ["inference.py", "--model_path", str(ckpt["small_vocab"]), "--prompt", "Hello"], codes=(1,),
             check=says("outside the model's vocabulary")),
        # inference.py: text, batches, signals
        Case("inference: non-UTF-8 --prompt, strict UTF-8 terminal", [*infer, "--prompt", latin1], codes=(0,),
             env=strict, check=says("caf\ufffd au lait", where="out")),
        Case("inference: non-UTF-8 stdin, strict UTF-8 terminal", [*infer, "--interactive"], codes=(0,), env=strict,
             stdin=b"caf\xe9 au lait\n:quit\n", check=says("caf\ufffd au lait", where="out")),
        Case("inference: ASCII-only terminal", [*infer, "--prompt", "caf\u00e9 \u2019quoted\u2019"], codes=(0,),
             env={"PYTHONIOENCODING": "ascii:strict"}),
        Case("inference: several prompts + a prompts file", [*infer, "--prompt", "Hello", "--prompt", "Essays",
                                                             "--prompts-file", str(prompts), "--seed", "1"],
             codes=(0,), check=says("--- prompt 4/4 ---", where="out")),
        Case("inference: several prompts with beam search", [*infer, "--prompt", "Hello", "--prompt", "Essays",
                                                             "--beams", "2"], codes=(0,),
             check=says("one prompt at a time")),
        Case("inference: Ctrl-D at the prompt", [*infer, "--interactive"], codes=(0,), stdin=b""),
        Case("inference: Ctrl-C during generation (interactive)",
             # greedy: a sampled <|endoftext|> could end the generation before the signal comes
             [*infer[:-1], "100000", "--temperature", "0", "--interactive"], codes=(0,),
             interact=sigint_while_generating,
             check=says("interrupted (Ctrl-C)", where="out")),
        Case("inference: Ctrl-C at the prompt", [*infer, "--interactive"], codes=(0,), interact=sigint_at_the_prompt),
        Case("inference: Ctrl-C during a one-shot generation", [*infer[:-1], "100000", "--temperature", "0",
                                                                "--prompt", "Hi"],
             codes=(130,), interact=sigint_one_shot),
    ]


def lock_cases(tmp: Path) -> list[Result]:
    """Two runs into one --out, a SIGKILLed holder, and the run that takes its lock over (real processes)."""
    corpus = tmp / "corpus"
    out = tmp / "locked_run"
    train = [sys.executable, "train.py", "--preset", "tiny", "--data", str(corpus), "--cache-dir", str(tmp / "cache"),
             "--quiet", "--batch-size", "2", "--eval-every", "0", "--set", "sample_tokens=0", "--set",
             "eval_batches=1", "--out", str(out)]
    results = []
    first = subprocess.Popen([*train, "--max-steps", "100000", "--save-every", "1"], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (out / "latest.pt").exists() and first.poll() is None:
            time.sleep(0.1)
        second = subprocess.run([*train, "--max-steps", "2"], cwd=REPO, env=ENV, capture_output=True, text=True,
                                timeout=300)          # the busy folder is reported before its earlier run
        problem = None if "is in use by another training run" in second.stderr else "no 'in use' error"
        results.append(judge(Case("lock: a second run into a running run's --out", []), second.returncode,
                             second.stdout, second.stderr, problem))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()

    step = load_checkpoint(out / "latest.pt")["step"]
    third = subprocess.run([*train, "--resume", "--max-steps", str(step + 2)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
    problem = None if "taking its lock over" in third.stderr else "no note about the dead run's lock"
    if not problem and load_checkpoint(out / "latest.pt")["step"] != step + 2:
        problem = "the resumed run did not continue"
    results.append(judge(Case("lock: resume after the holder was SIGKILLed", [], codes=(0,)), third.returncode,
                         third.stdout, third.stderr, problem))
    return results


# --- running and judging ----------------------------------------------------------------------------------------

def judge(case: Case, code: int | None, out: str, err: str, problem: str | None = None) -> Result:
    if problem and problem.startswith("timed out"):
        pass
    elif "Traceback (most recent call last)" in err + out:
        problem = "TRACEBACK: " + err.strip().splitlines()[-1][:160]
    elif code not in case.codes:
        problem = f"exit code {code}, expected {case.codes}"
    elif problem is None and case.check is not None:
        problem = case.check(out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    first = lines[0] if lines else (out.strip().splitlines() or [""])[-1]
    return Result(case, code, problem, first[:150])


def run_case(case: Case) -> Result:
    command = [sys.executable, *case.argv]
    env = ENV | case.env
    if case.interact is not None:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            out, err = case.interact(proc)
        finally:
            proc.kill()
            proc.wait()
        code = proc.returncode
    else:
        try:
            done = subprocess.run(command, cwd=REPO, env=env, input=case.stdin, capture_output=True, timeout=300)
        except subprocess.TimeoutExpired as err:
            return judge(case, None, (err.stdout or b"").decode("utf-8", "replace"),
                         (err.stderr or b"").decode("utf-8", "replace"), "timed out after 300 s")
        out, err, code = done.stdout, done.stderr, done.returncode
    return judge(case, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bad_input_sweep_") as folder:
        tmp = Path(folder)
        results = []
        try:
            for case in build_cases(tmp):
                if args.k in case.name:
                    results.append(run_case(case))
                    print(format_result(results[-1]), flush=True)
            if args.k in "lock: a second run into a running run's --out / resume after SIGKILL":
                for result in lock_cases(tmp):
                    results.append(result)
                    print(format_result(result), flush=True)
        finally:
            (tmp / "read_only").chmod(0o755)
            if os.path.ismount(tmp / "small_disk"):
                subprocess.run(["umount", str(tmp / "small_disk")], check=False)
    tracebacks = sum(1 for r in results if r.problem and r.problem.startswith("TRACEBACK"))
    failed = sum(1 for r in results if r.problem)
    print(f"\n{len(results)} cases in {time.perf_counter() - started:.0f} s: {len(results) - failed} as expected, "
          f"{tracebacks} traceback(s), {failed - tracebacks} other failure(s)")
    return 1 if failed else 0


def format_result(result: Result) -> str:
    status = "ok " if result.problem is None else "FAIL"
    detail = f" -- {result.problem}" if result.problem else ""
    return f"[{status}] {result.case.name} (exit {result.code}): {result.first_line}{detail}"


if __name__ == "__main__":
    sys.exit(main())
