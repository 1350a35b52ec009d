"""scripts/draw_diagrams.py: every schematic is drawn, is a real image of a sensible size, and has no
layout problem the script can measure (overlapping or clipped text, text crossed by an arrow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("model_block_diagram.png", "mla_data_flow.png", "absorption_regrouping.png", "moe_routing.png",
           "balancing_loops.png", "sampling_pipeline.png", "cache_budget.png", "ablation_grid.png",
           "training_step.png")


def test_draw_diagrams_writes_every_figure(tmp_path):
    done = subprocess.run([sys.executable, "scripts/draw_diagrams.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for name in FIGURES:
        path = tmp_path / name
        assert path.is_file(), f"{name} not written; stdout: {done.stdout}"
        assert name in done.stdout                     # the script says what it wrote
        image = mpimg.imread(path)
        height, width = image.shape[:2]
        assert image.ndim == 3 and image.shape[2] in (3, 4)
        assert 1200 <= width <= 2000 and 800 <= height <= 2000, (name, image.shape)   # ~10 inches at dpi 150
        assert image[..., :3].std() > 0.05, f"{name} looks blank"
        assert image[0, 0, :3].min() > 0.99, f"{name}: background is not white"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES)


def test_draw_diagrams_help():
    done = subprocess.run([sys.executable, "scripts/draw_diagrams.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout
