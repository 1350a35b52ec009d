"""`python -m trainer plot RUN_DIR`: a tiny run's metrics.jsonl drawn into RUN_DIR/metrics.png, the panels
holding the logged numbers; a directory without metrics is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import pattern_ids, tiny_cfg, train_cfg

from figures.plotting import plot_run, read_metrics
from trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """6 steps of a 3-layer model (1 dense + 2 MoE layers), evaluated every 2 steps."""
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_cfg(n_layers=3), train_cfg(out, max_steps=6, eval_every=2), train_ids=pattern_ids(5000),
            val_ids=pattern_ids(2000, seed=1)).train()
    return out


def plot_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", "plot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


def test_plot_command_writes_a_png_beside_the_metrics_and_says_where(run_dir):
    result = plot_cli(str(run_dir))
    assert result.returncode == 0, result.stderr
    png = run_dir / "metrics.png"
    assert result.stdout.strip() == f"wrote {png}"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 900          # 11 x 7 inches at 110 dpi
    assert image.std() > 0.05                                       # not a blank canvas


def test_plot_panels_hold_the_logged_numbers(run_dir):
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig = plot_run(rows)
    loss_ax, lr_ax, grad_ax, load_ax = fig.axes
    assert list(loss_ax.lines[0].get_ydata()) == [r["ce"] for r in train]
    assert list(loss_ax.lines[1].get_xdata()) == [2, 4, 6] == [r["step"] for r in evals]
    assert list(lr_ax.lines[0].get_ydata()) == [r["lr"] for r in train]
    assert list(grad_ax.lines[0].get_ydata()) == [r["grad_norm"] for r in train]
    per_layer = [line for line in load_ax.lines if line.get_label().startswith("MoE layer")]
    assert len(per_layer) == 2                                      # one line per MoE layer
    assert list(per_layer[1].get_ydata()) == [r["load_max_ratio"][1] for r in train]


def test_plot_of_a_running_run_skips_a_line_cut_short(run_dir, tmp_path):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "st')
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == len(lines)
    assert plot_cli(str(tmp_path), "--out", str(tmp_path / "now.png")).returncode == 0
    assert (tmp_path / "now.png").is_file()


def test_plot_without_metrics_is_one_line(tmp_path):
    result = plot_cli(str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"python -m trainer plot: error: no metrics.jsonl in {tmp_path / 'missing'}: "
                                     "pass the --out directory of a train.py run (default checkpoints)")
