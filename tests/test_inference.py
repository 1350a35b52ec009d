"""inference.py as users run it: the seed-book commands, both flag spellings, bad values, the
interactive loop driven through stdin, and missing or corrupt checkpoints."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import inference
from components.deepseek_model import DeepSeekModel
from constants import TINY
from training.checkpoint import atomic_save, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The best way to learn programming is"
CFG = replace(TINY, n_layers=1, context_length=32, d_model=32, kv_latent_dim=8, expert_hidden_dim=32)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    """A tiny random model with the GPT-2 vocabulary, saved the way the trainer saves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    atomic_save(make_checkpoint(DeepSeekModel(CFG), step=0, kind="best"), path)
    return path


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "inference.py", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=240)


def report_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "tokens/s" in line]


def completion(stdout: str) -> str:
    """The text printed before the report line (the CLI prints 'loaded ...' first)."""
    lines = stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if "tokens/s" in line)
    return "\n".join(lines[1:end])


# --- the commands of the book, as subprocesses ---------------------------------------------------

def test_seed_book_prompt_command(checkpoint_path):
    result = run_cli("--model_path", str(checkpoint_path), "--prompt", PROMPT, "--max_new_tokens", "100",
                     "--temperature", "0.8", "--top_k", "40")
    assert result.returncode == 0, result.stderr
    assert completion(result.stdout).startswith(PROMPT)
    (report,) = report_lines(result.stdout)
    assert "100 tokens" in report and "KiB" in report
    # MLA caches c_KV and the RoPE key: kv_latent_dim + rope_head_dim values per token per layer
    assert f"{CFG.kv_latent_dim + CFG.resolved().rope_head_dim} values/token/layer" in report


def test_hyphenated_flags_alias_and_stop_string(checkpoint_path):
    common = ["--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "1.0", "--top-k", "50",
              "--top-p", "0.95", "--seed", "3", "--repetition-penalty", "1.1", "--presence-penalty", "0.1",
              "--frequency-penalty", "0.1", "--no-repeat-ngram-size", "3", "--temperature-end", "0.5",
              "--no-absorb"]
    first = run_cli("--model-path", str(checkpoint_path), *common)
    assert first.returncode == 0, first.stderr
    text = completion(first.stdout)[len(PROMPT):]
    assert "mla naive" in report_lines(first.stdout)[0]
    middle = len(text) // 2                                # a visible piece from the middle of the completion
    start = next(i for i in range(middle, len(text)) if not text[i].isspace() and text[i] != "\\")
    stop = text[start:start + 3]
    second = run_cli("--checkpoint", str(checkpoint_path), *common, "--stop", stop)
    assert second.returncode == 0, second.stderr
    assert completion(second.stdout) == PROMPT + text[:text.index(stop)]


def test_interactive_mode_through_stdin(checkpoint_path):
    script = ":temperature 1.1\n:top_k nope\n:max_new_tokens 5\n:show\nHello there\n:quit\nnever read\n"
    result = run_cli("--model_path", str(checkpoint_path), "--interactive", stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "temperature = 1.1" in out
    assert "error: top_k: expects an integer or 'none', got 'nope'" in out
    assert "max_new_tokens=5" in out and "temperature=1.1" in out
    (report,) = report_lines(out)
    assert "5 tokens" in report
    assert "Hello there" in out and "never read" not in out


def test_invalid_value_exits_2_with_one_line_before_loading():
    result = run_cli("--model_path", "does/not/exist.pt", "--top_p", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["inference.py: error: top_p=1.5: must be None or a number in (0, 1]"]
    assert result.stdout == ""


def test_missing_checkpoint_exits_1_with_one_line(tmp_path):
    result = run_cli("--model_path", str(tmp_path / "missing.pt"), "--prompt", "hi")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "missing.pt" in line


# --- the same entry point in-process (cheaper: no new interpreter per case) -------------------------

@pytest.mark.parametrize("argv", [
    ["--temperature", "-1"], ["--top-k", "0"], ["--top_k", "abc"], ["--max_new_tokens", "0"], ["--beams", "0"],
    ["--num-samples", "0"], ["--repetition_penalty", "0"], ["--no_repeat_ngram_size", "-2"], ["--seed", "-1"],
    ["--temperature_end", "nan"], ["--stop", ""], ["--device", "cuda:7" if not torch.cuda.is_available() else "bogus"],
    ["--unknown-flag", "1"],
])
def test_invalid_values_are_rejected_before_loading(argv, capsys, monkeypatch):
    monkeypatch.setattr("inference.load_any_model", lambda *a, **k: pytest.fail("loaded despite a bad value"))
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["--model_path", "does/not/exist.pt", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("inference.py: error:")


def test_corrupt_checkpoint_exits_1(tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert inference.main(["--model_path", str(bad), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt.pt" in err[0]


def test_beams_and_num_samples(checkpoint_path, capsys):
    assert inference.main(["--model_path", str(checkpoint_path), "--prompt", PROMPT, "--beams", "3",
                           "--max_new_tokens", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "KV cache: none (beam search" in out
    assert inference.main(["--model_path", str(checkpoint_path), "--prompt", PROMPT, "--num_samples", "2",
                           "--max_new_tokens", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "--- sample 1/2 ---" in out and "--- sample 2/2 ---" in out and len(report_lines(out)) == 2


def test_interactive_commands_validate_and_keep_going():
    settings = {name: default for name, (_, default, _) in inference.SETTINGS.items()} | {"stop": [], "absorb": True}
    updated, message = inference.apply_command(":top-p 0.9", settings)
    assert updated["top_p"] == 0.9 and message == "top_p = 0.9"
    same, message = inference.apply_command(":temperature -2", updated)
    assert same is updated and message.startswith("error: temperature=-2.0")
    updated, _ = inference.apply_command(":stop \\n\\n", updated)
    assert updated["stop"] == ["\n\n"]
    updated, message = inference.apply_command(":no-absorb on", updated)
    assert updated["absorb"] is False and message == "absorb = False"
    assert inference.apply_command(":help", updated)[1] == inference.HELP
    assert inference.apply_command(":nonsense 3", updated)[1].startswith("error: unknown command")


# --- streaming -------------------------------------------------------------------------------------

class RecordingStdout(io.StringIO):
    """stdout that remembers how much had been printed each time the model produced a token."""


def streamed(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Wrap inference.stream_tokens: record len(stdout) at every token; raise Ctrl-C after `stop_after` tokens."""
    seen, real = [], inference.stream_tokens

    def recording(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if stop_after is not None and i == stop_after:
                raise KeyboardInterrupt
            seen.append(len(sys.stdout.getvalue()))
            yield item

    monkeypatch.setattr(inference, "stream_tokens", recording)
    return seen


def test_one_prompt_is_printed_as_it_is_generated(checkpoint_path, monkeypatch):
    common = ["--model_path", str(checkpoint_path), "--prompt", PROMPT, "--max_new_tokens", "30", "--seed", "2",
              "--temperature", "1.0"]
    assert inference.main(common) == 0          # the reference: the same completion (seeded), checked after
    monkeypatch.setattr(sys, "stdout", RecordingStdout())
    seen = streamed(monkeypatch)
    assert inference.main(common) == 0
    out = sys.stdout.getvalue()
    monkeypatch.undo()
    loaded = out.index("\n") + 1
    # seen[i]: what was printed when token i came out of the model (before it was decoded and printed)
    assert len(seen) == 30 and seen[0] == loaded and seen[1] > loaded + len(PROMPT)
    assert len(set(seen)) > 10 and seen[-1] > seen[0]                     # text kept appearing while generating
    assert completion(out).startswith(PROMPT) and len(report_lines(out)) == 1


def test_streamed_output_equals_the_whole_completions_and_ctrl_c_keeps_the_text(checkpoint_path, monkeypatch, capsys):
    """With a stop string and several prompts the printed text is exactly the returned completions; Ctrl-C
    after 7 tokens prints the text of those 7 tokens, and the report says so."""
    model, _ = inference.load_any_model(checkpoint_path)
    tokenizer = inference.get_tokenizer()
    settings = {name: default for name, (_, default, _) in inference.SETTINGS.items()} | {
        "max_new_tokens": 25, "seed": 4, "temperature": 1.0, "stop": [" the"], "absorb": True}
    prompts = [PROMPT, "Startups are", "Hello"]
    texts, _, _ = inference.complete_batch(model, tokenizer, prompts, settings, 0, torch.device("cpu"))
    assert inference.run_prompts(model, tokenizer, prompts, settings, torch.device("cpu")) is True
    out = capsys.readouterr().out
    assert out.startswith("".join(f"--- prompt {i + 1}/3 ---\n{text}\n" for i, text in enumerate(texts)))
    streamed(monkeypatch, stop_after=7)
    assert inference.run_prompts(model, tokenizer, [PROMPT], settings | {"stop": []}, torch.device("cpu")) is False
    out = capsys.readouterr().out
    (seven,), _, _ = inference.complete_batch(model, tokenizer, [PROMPT], settings | {"stop": [], "max_new_tokens": 7},
                                              0, torch.device("cpu"))
    assert out.startswith(seven + "\n") and len(seven) > len(PROMPT)
    assert "[interrupted (Ctrl-C) after 7 tokens" in out
