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
    """The one error line of stderr (lines that only warn, 'warning: ...', may come before it)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


# --- devices -----------------------------------------------------------------------------------------

def test_unknown_device_is_one_line_in_train_and_inference(capsys, monkeypatch):
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
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
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
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
    from training.checkpoint import atomic_save, make_checkpoint

    torch.manual_seed(0)
    ckpt = make_checkpoint(DeepSeekModel(tiny_cfg()), step=0, kind="best")
    ckpt["model_config"] |= config_changes
    atomic_save(ckpt, path)
    return path


def test_a_pickle_that_calls_a_blocked_global_is_refused_as_unsafe(tmp_path):
    from training.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and "truncated or corrupt" not in message
    assert message.startswith(f"refused to load {path} as unsafe") and "system" in message


def test_a_config_describing_a_huge_model_is_refused_before_building(tmp_path, monkeypatch):
    from training import checkpoint

    path = small_checkpoint(tmp_path / "huge.pt", d_model=65536, n_layers=64, expert_hidden_dim=65536)
    monkeypatch.setattr(checkpoint, "DeepSeekModel", lambda cfg: pytest.fail("the model was built before the check"))
    with pytest.raises(checkpoint.CheckpointError, match=r"its config describes a model of [\d,]+ parameters, but "
                                                         r"the file holds only [\d,]+ weights"):
        checkpoint.load_model(path)


def test_a_model_that_does_not_fit_in_memory_is_refused_before_building(tmp_path, monkeypatch):
    from training import checkpoint

    path = small_checkpoint(tmp_path / "fine.pt")
    monkeypatch.setattr(checkpoint, "available_memory", lambda: 1024)
    monkeypatch.setattr(checkpoint, "DeepSeekModel", lambda cfg: pytest.fail("the model was built before the check"))
    with pytest.raises(checkpoint.CheckpointError, match=r"needs about .* GiB of memory, only 0\.0 GiB are available"):
        checkpoint.load_model(path)


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, capsys):
    from training.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model

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


# --- train.py: the output folder ---------------------------------------------------------------------

@pytest.fixture
def no_data(monkeypatch):
    """train.main must refuse before preparing any data."""
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))


def train_error(capsys, *argv) -> str:
    assert train.main(["--preset", "tiny", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return one_error_line(captured.err, "train.py: error: ")


def test_vocab_size_below_the_tokenizer_is_rejected_up_front(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    line = train_error(capsys, "--set", "vocab_size=1000", "--out", str(out))
    assert "vocab_size=1000 is smaller than the GPT-2 tokenizer's 50257 ids" in line and "--vocab-top" in line
    assert not out.exists()                                             # nothing written


def test_out_that_is_a_file_is_refused_up_front(tmp_path, capsys, no_data):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    assert f"--out {out} is a file, not a folder" in train_error(capsys, "--out", str(out))
    assert out.read_text() == "my notes"


def test_read_only_out_is_refused_up_front(tmp_path, capsys, monkeypatch, no_data):
    """A folder this process may not write to (chmod 555; as root, which ignores modes, the refusal the kernel
    would give is simulated at os.open)."""
    import errno
    import os

    out = tmp_path / "readonly"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    out.chmod(0o555)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    try:
        line = train_error(capsys, "--out", str(out))
    finally:
        out.chmod(0o755)
    assert f"--out {out} is not writable (Permission denied)" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_fresh_run_never_replaces_an_earlier_run_without_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 7}\n')
    (out / "latest.pt").write_bytes(b"an earlier run's checkpoint")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    line = train_error(capsys, "--out", str(out))
    assert f"--out {out} holds an earlier run (latest.pt, metrics.jsonl)" in line
    assert "--resume to continue it, --overwrite to replace it" in line
    assert train_error(capsys, "--out", str(out), "--overwrite", "--resume").endswith("pass one of them")
    # --overwrite gets past the check; a run that then fails (here: its data) still deletes nothing
    monkeypatch.setattr("train.prepare_data", lambda *a, **k: (_ for _ in ()).throw(ValueError("no essays here")))
    assert train.main(["--preset", "tiny", "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert one_error_line(capsys.readouterr().err, "train.py: error: ") == "train.py: error: no essays here"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # and the lock is gone again


def test_a_folder_locked_by_a_live_run_is_refused(tmp_path, capsys, no_data):
    from training.run_lock import RunLock

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")               # busy AND an earlier run: busy is said first
    holder = RunLock(out)
    assert holder.acquire() is None
    try:
        line = train_error(capsys, "--out", str(out), "--overwrite")
        assert train_error(capsys, "--out", str(out)) == line
    finally:
        holder.release()
    assert f"{out} is in use by another training run (pid {__import__('os').getpid()} on " in line
    assert "wait for it to finish, or choose another --out" in line
    assert not (out / ".lock").exists()                                  # released: the file is gone


def test_the_lock_of_a_sigkilled_run_is_taken_over_with_a_note(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from training.run_lock import RunLock

    out = tmp_path / "run"
    out.mkdir()
    code = ("import sys, time; from training.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="is in use by another training run"):
            RunLock(out).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    lock = RunLock(out)
    note = lock.acquire()                                 # the kernel dropped the dead process's lock
    assert note.startswith(f"note: {out} was locked by a run that is no longer running (pid {proc.pid} on ")
    assert note.endswith("taking its lock over")
    lock.release()


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_save(tmp_path, capsys, monkeypatch):
    import errno
    import os

    from training_helpers import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def disk_fills_up(obj, handle, *args, **kwargs):           # the first save fits, every later one does not
        calls["n"] += 1
        if calls["n"] == 1:
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_fills_up)
    code = train.main(["--preset", "tiny", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--out",
                       str(out), "--max-steps", "2", "--save-every", "1", "--eval-every", "0", "--batch-size", "2",
                       "--quiet", "--set", "sample_tokens=0", "--set", "eval_batches=1"])
    assert code == 1
    line = one_error_line(capsys.readouterr().err, "train.py: error: ")
    assert f"writing to {out} failed (No space left on device)" in line
    assert f"continue from the last save, {out / 'latest.pt'} (step 1), with: python train.py --out {out} --resume" \
        in line
    from training.checkpoint import load_checkpoint

    assert load_checkpoint(out / "latest.pt")["step"] == 1                  # the last complete save, intact
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


# --- python -m ablation --------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ("title,body\nA,some words\n", "no 'text' column"),
    ("text\nOnly a few words here.\n", "every run needs at least one window of context_length+1"),
])
def test_ablation_with_bad_data_is_one_line_and_leaves_no_folder(tmp_path, capsys, content, message):
    from ablation import run as ablation

    bad = tmp_path / "essays.csv"
    bad.write_text(content)
    out = tmp_path / "records"
    assert ablation.main(["--tokens", "64", "--data", str(bad), "--out", str(out), "--cache-dir",
                          str(tmp_path / "cache")]) == 2
    assert message in one_error_line(capsys.readouterr().err, "ablation: error: ")
    assert not out.exists()


@pytest.mark.parametrize("below", [False, True])
def test_ablation_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, below):
    from ablation import run as ablation

    monkeypatch.setattr(ablation, "load_data", lambda *a: pytest.fail("data loaded before the check"))
    target = tmp_path / "records.txt"
    target.write_text("not a folder")
    out = target / "study" if below else target
    assert ablation.main(["--tokens", "64", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "ablation: error: ")
    expected = f"is below {target}, which is a file" if below else "is a file, not a folder"
    assert f"--out {out} {expected}" in line
    assert target.read_text() == "not a folder"


# --- inference.py: Ctrl-C, line editing, text the terminal cannot print ---------------------------------

INFER_CFG = dataclasses.replace(TINY, n_layers=1, context_length=32, d_model=32, kv_latent_dim=8,
                                expert_hidden_dim=32)


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A tiny random model with the GPT-2 vocabulary, saved as the trainer saves it."""
    from training.checkpoint import atomic_save, make_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    atomic_save(make_checkpoint(DeepSeekModel(INFER_CFG), step=0, kind="best"), path)
    return path


def interactive_session(monkeypatch, lines: list, stream=None) -> list[str]:
    """Run inference.interactive on `lines` (an exception instance is raised by input() instead);
    returns the lines still unread."""
    from utils import get_tokenizer

    queue = list(lines)

    def fake_input(prompt=""):
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr("builtins.input", fake_input)
    if stream is not None:
        monkeypatch.setattr(inference, "stream_tokens", stream)
    settings = {name: default for name, (_, default, _) in inference.SETTINGS.items()} | {"stop": [], "absorb": True}
    torch.manual_seed(0)
    inference.interactive(DeepSeekModel(INFER_CFG).eval(), get_tokenizer(), settings | {"max_new_tokens": 5},
                          torch.device("cpu"))
    return queue


def test_ctrl_c_during_generation_stops_it_and_keeps_the_session(monkeypatch, capsys):
    def interrupted_stream(model, idx, *args, **kwargs):
        yield torch.tensor([[383]]), []                  # ' The'
        yield torch.tensor([[1266]]), []                 # ' best'
        raise KeyboardInterrupt

    left = interactive_session(monkeypatch, ["Hello", ":show", ":quit", "never read"], interrupted_stream)
    out = capsys.readouterr().out
    assert "Hello The best\n[interrupted (Ctrl-C) after 2 tokens in" in out      # the text so far is kept
    assert "max_new_tokens=5" in out and left == ["never read"]                # ... and the session went on


@pytest.mark.parametrize("end", [KeyboardInterrupt(), EOFError()])
def test_ctrl_c_or_ctrl_d_at_the_prompt_ends_the_session_cleanly(monkeypatch, capsys, end):
    assert interactive_session(monkeypatch, [":show", end, "never read"]) == ["never read"]
    assert "Traceback" not in capsys.readouterr().err


def test_the_prompt_has_line_editing_where_readline_exists(monkeypatch):
    import importlib.util
    import sys

    assert importlib.util.find_spec("readline") is not None, "this test needs a Python with readline"
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    inference.line_editing()
    assert "readline" in sys.modules                       # input() now edits lines and keeps a history


def test_real_sigint_during_generation_keeps_the_session(gpt2_checkpoint):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "inference.py", "--model_path", str(gpt2_checkpoint), "--interactive",
                             "--max_new_tokens", "100000",
                             # greedy: a sampled token could be <|endoftext|>, which ends the generation
                             # before the signal comes (greedy from this model and prompt runs 20,000 tokens
                             # without it; 1.5 s here is at most a few thousand)
                             "--temperature", "0"], cwd=Path(__file__).resolve().parents[1],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"},
                            # a terminal's Ctrl-C reaches the child even when pytest itself was started in the
                            # background (`cmd &` in a script ignores SIGINT, and children inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith("loaded ")
        assert proc.stdout.readline().startswith("interactive mode")
        proc.stdin.write("Hello\n")
        proc.stdin.flush()
        time.sleep(1.5)                                    # generating (it would take hours to finish)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(":quit\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "interrupted (Ctrl-C)" in out


@pytest.mark.parametrize("where", ["argv", "stdin"])
def test_text_that_is_not_utf8_prints_under_a_strict_utf8_terminal(gpt2_checkpoint, where):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = os.environ | {"PYTHONIOENCODING": "utf-8:strict", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "inference.py", "--model_path", str(gpt2_checkpoint), "--max_new_tokens", "3"]
    if where == "argv":                                     # the shell passed Latin-1 bytes: caf\xe9
        command += ["--prompt", os.fsdecode(b"caf\xe9 au lait")]
        stdin = None
    else:
        command += ["--interactive"]
        stdin = b"caf\xe9 au lait\n:quit\n"
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], input=stdin, capture_output=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")
    assert "caf\ufffd au lait" in result.stdout.decode("utf-8")     # the bad byte shown as U+FFFD


def test_a_missing_prompts_file_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("inference.load_any_model", lambda *a, **k: pytest.fail("loaded despite a bad flag"))
    for path, message in [(tmp_path / "none.txt", "No such file"), (tmp_path, "Is a directory")]:
        with pytest.raises(SystemExit) as exit_info:
            inference.main(["--prompts-file", str(path)])
        assert exit_info.value.code == 2
        assert message in one_error_line(capsys.readouterr().err, "inference.py: error: --prompts_file ")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(SystemExit):
        inference.main(["--prompts-file", str(tmp_path / "blank.txt")])
    assert "no prompts in it" in one_error_line(capsys.readouterr().err, "inference.py: error: ")
