"""Re-execute every chapter notebook (and its solutions) in place, so committed outputs are fresh.

    python scripts/run_notebooks.py                 # all notebooks, reading mode
    DEEPSEEK_SCRATCH_FAST=1 python scripts/run_notebooks.py notebooks/03_*.ipynb   # CI-sized run

Uses the real essays when DEEPSEEK_SCRATCH_DATA points at them (else the loader's fallbacks).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    for path in paths:
        print(f"executing {path} ...", flush=True)
        print(f"  done in {run(path.resolve()):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
