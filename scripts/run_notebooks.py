"""Re-execute every chapter notebook (and its solutions) in place, so committed outputs are fresh.

    python scripts/run_notebooks.py                 # all notebooks, reading mode
    DEEPSEEK_SCRATCH_FAST=1 python scripts/run_notebooks.py notebooks/03_*.ipynb   # CI-sized run

Uses the real essays when DEEPSEEK_SCRATCH_DATA points at them (else the loader's fallbacks).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CommandLine  # noqa: E402
from constants import FAST_ENV_VAR  # noqa: E402


class NotebookFailed(RuntimeError):
    """A notebook that could not be read or whose run failed; the message is one line naming the cell."""


def read_notebook(path: Path):
    """The notebook at `path`, or NotebookFailed when it is not JSON or not a valid notebook."""
    try:
        return nbformat.read(path, as_version=4)
    except (ValueError, nbformat.ValidationError, UnicodeDecodeError) as err:   # NotJSONError is a ValueError
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise NotebookFailed(f"{path} is not a Jupyter notebook ({first}); pass an .ipynb file") from None


def run(path: Path, timeout: int) -> float:
    """Execute the notebook and write its fresh outputs; on a failing cell nothing is written (the committed
    outputs stay) and NotebookFailed says which cell failed and how."""
    nb = read_notebook(path)
    start = time.perf_counter()
    # the kernel process's own stderr (its start-up warnings, a traceback when it is stopped mid-reply after a
    # timeout) goes to a log, not the terminal: cells' output comes through the kernel's messages either way
    kernel_log = tempfile.TemporaryFile(mode="w+")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute(stderr=kernel_log)
    except CellTimeoutError:
        raise NotebookFailed(f"{path}: cell {_failed_cell(nb, running=True)} ran longer than --timeout {timeout} s; "
                             "raise --timeout or make the cell faster (the notebook was left as it was)") from None
    except CellExecutionError as err:
        what = f"{err.ename}: {str(err.evalue).strip()[:160]}" if getattr(err, "ename", None) else "an error"
        raise NotebookFailed(f"{path}: cell {_failed_cell(nb)} raised {what} (the notebook was left as it was; "
                             "run it in Jupyter to see the traceback)") from None
    except DeadKernelError as err:
        kernel_log.seek(0)
        last = next((line.strip() for line in reversed(kernel_log.read().splitlines()) if line.strip()), "")
        raise NotebookFailed(f"{path}: the kernel died ({(last or str(err).strip())[:120]}); out of memory? "
                             "(the notebook was left as it was)") from None
    finally:
        kernel_log.close()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def _failed_cell(nb, running: bool = False) -> str:
    """'N' (1-based among all cells) of the cell whose output is an error, or of the last cell that started."""
    last = "?"
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return str(number)
        if cell.get("execution_count") is not None or running:
            last = str(number)
            if running and cell.get("execution_count") is None:
                return last
    return last


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python scripts/run_notebooks.py", description=__doc__.splitlines()[0],
                    epilog="Reading mode unless DEEPSEEK_SCRATCH_FAST=1; the essays from DEEPSEEK_SCRATCH_DATA.")
    p.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every chapter, then every solution)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    args = p.parse_args(argv)
    if args.timeout < 1:
        p.error(f"--timeout {args.timeout}: must be >= 1 (seconds one cell may run)")
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
        try:
            times[path.name] = run(path.resolve(), args.timeout)
        except NotebookFailed as err:
            print(f"run_notebooks.py: error: {err}", file=sys.stderr)
            return 1
        print(f"  done in {times[path.name]:.1f} s", flush=True)
    print(f"{mode} mode, {len(times)} notebook(s): " + ", ".join(f"{n} {t:.0f} s" for n, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
