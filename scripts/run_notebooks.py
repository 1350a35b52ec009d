"""Re-execute every chapter notebook (and its solutions) in place, so committed outputs are fresh.

    python scripts/run_notebooks.py                 # all notebooks, reading mode
    DEEPSEEK_SCRATCH_FAST=1 python scripts/run_notebooks.py notebooks/03_*.ipynb   # CI-sized run

Uses the real essays when DEEPSEEK_SCRATCH_DATA points at them (else the loader's fallbacks).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CommandLine  # noqa: E402
from constants import FAST_ENV_VAR  # noqa: E402


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python scripts/run_notebooks.py", description=__doc__.splitlines()[0],
                    epilog="Reading mode unless DEEPSEEK_SCRATCH_FAST=1; the essays from DEEPSEEK_SCRATCH_DATA.")
    p.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every chapter, then every solution)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    args = p.parse_args(argv)
    paths = [Path(n) for n in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    missing = [str(n) for n in paths if not n.is_file()]
    if missing:
        print(f"run_notebooks.py: error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    # the kernels must draw with Jupyter's inline backend, or plt.show() embeds no figure in the outputs
    # (CI sets MPLBACKEND=Agg for its own runs, which compare text only)
    os.environ.pop("MPLBACKEND", None)
    mode = "FAST" if os.environ.get(FAST_ENV_VAR) == "1" else "reading"
    times = {}
    for path in paths:
        print(f"executing {path} ({mode} mode) ...", flush=True)
        times[path.name] = run(path.resolve(), args.timeout)
        print(f"  done in {times[path.name]:.1f} s", flush=True)
    print(f"{mode} mode, {len(times)} notebook(s): " + ", ".join(f"{n} {t:.0f} s" for n, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
