"""Makefile: the pip set-up runs only when pyproject.toml or scripts/setup.sh changed, and `make lab` works as
root and takes LAB_ARGS (headless / remote machines). Run on a copy with a stand-in .venv: nothing installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@pytest.fixture
def clone(tmp_path):
    """The Makefile and pyproject.toml; setup.sh, pip and jupyter replaced by scripts that log their arguments."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text("mkdir -p .venv/bin\necho setup.sh ran >> log\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for tool in ("python", "jupyter"):
        script = tmp_path / ".venv" / "bin" / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> log\n')
        script.chmod(0o755)
    return tmp_path


def make(clone: Path, *args: str) -> list[str]:
    """Run make; the lines logged by the stand-ins during this run."""
    log = clone / "log"
    before = log.read_text().splitlines() if log.exists() else []
    subprocess.run(["make", "--no-print-directory", *args], cwd=clone, check=True, capture_output=True, timeout=60)
    return (log.read_text().splitlines() if log.exists() else [])[len(before):]


def test_setup_runs_again_only_when_its_inputs_change(clone):
    assert make(clone, "setup") == ["setup.sh ran"]
    assert make(clone, "setup") == []                          # the environment is current: no pip
    time.sleep(1.1)                                            # mtime resolution of some filesystems
    (clone / "pyproject.toml").touch()
    assert make(clone, "setup") == ["setup.sh ran"]
    assert make(clone, "setup", "FORCE=1") == ["setup.sh ran"]


def test_lab_installs_its_extra_once_and_passes_lab_args_and_allow_root(clone):
    root = ["--allow-root"] if os.getuid() == 0 else []
    first = make(clone, "lab", "LAB_ARGS=--no-browser --ip 0.0.0.0 --port 8888")
    assert first == ["setup.sh ran", 'python -m pip install -q -e .[notebooks]',
                     " ".join(["jupyter lab notebooks/", *root, "--no-browser --ip 0.0.0.0 --port 8888"])]
    assert make(clone, "lab") == [" ".join(["jupyter lab notebooks/", *root])]     # nothing installed again
