"""Grade submitted chapter notebooks: run each in a fresh kernel, check every exercise, write a table and a CSV.

    python -m exercises grade submissions/ --csv grades.csv
    python -m exercises grade alice/01_attention_and_kv_cache.ipynb bob/01_attention_and_kv_cache.ipynb

Who is who: a notebook belongs to the student named by the folder it sits in (submissions/alice/...
is alice), or with `--student file`, by its file name without .ipynb. Which chapter: the notebook's
metadata (the chapter notebooks carry it), else its file name (`03_...`), else its check cells.

Each notebook runs top to bottom in a fresh kernel, in a scratch copy of this project without the
solutions (the student release's files), started in the copy's notebooks/ folder with the copy on
PYTHONPATH (so the student's code meets the same library and checkers as here, and nothing from the
submission folder is imported), with DEEPSEEK_SCRATCH_FAST=1 unless --full (the checks do not depend on
the sizes; chapter 6 would train for 10 minutes otherwise). A cell that raises does not stop the run;
the notebook as a whole gets --timeout seconds, after which the running cell is interrupted and the rest
skipped. Then every exercise is checked HERE, in the grader's process: the check calls a proxy of the
student's function, and each call runs the function in the kernel on the hidden inputs and brings back
only its outputs, as data (exercises/exchange.py). So what a notebook patches in its kernel
(exercises.run_check, torch.allclose) cannot change a verdict. The function checked is the one the
student last passed to check_exercise (or else the notebook's function of the exercise's name); each
check gets --check-timeout seconds. A notebook that crashes, hangs or was never run is still graded:
what it defined counts, what it did not is a FAIL that says why. At the end every process the kernel
started is killed (its process group, and every process carrying the run's id in its environment).
The student's code still runs with the grader's permissions: it is a grader, not a sandbox
(docs/teaching.md says what needs one).

Rows (--csv OUT): one per student and exercise. `status` is one of PASS, FAIL, NOT ATTEMPTED or ERROR
(ERROR: the grader could not grade it -- an unreadable notebook, an unknown chapter, a kernel that
died); `hint` holds the checker's hint or the reason, in full; a written exercise has no points here:
its text is in `answer` and `for_teacher` says it is to be scored. The summary (--summary OUT, by
default next to the CSV as OUT_summary.csv): one row per student, the points of every chapter, the
written answers the teacher still has to score, and notes on the notebooks (a cell that raised, a time
limit that was hit). The console shows both, hints in full.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.cli import CommandLine, UsageError
from exercises import ANSWERED, FAIL, NOT_ATTEMPTED, PASS, _check_written, chapter_exercises, exchange, run_check
from exercises.notebook import chapter_of
from exercises.release import is_excluded, project_files

ROOT = Path(__file__).resolve().parent.parent           # the project whose library and checkers grade
COLUMNS = ("student", "chapter", "exercise", "kind", "status", "points", "max_points", "for_teacher", "hint", "answer",
           "notebook")
ERROR = "ERROR"                                         # the grader could not grade it (not the student's answer)
STATUSES = (PASS, FAIL, NOT_ATTEMPTED, ERROR)           # the only values of the status column
CHAPTER_NUMBERS = range(1, 9)
COLAB_TAGS = {"colab-badge", "colab-setup"}            # Colab-only set-up: nothing to do where the grader runs


@dataclass
class Submission:
    path: Path
    student: str
    chapter: int | None
    nb: object | None                                   # the parsed notebook, None if unreadable
    problem: str = ""                                   # why it cannot be run, if it cannot


@dataclass
class Graded:
    submission: Submission
    results: dict = field(default_factory=dict)         # exercise id -> dict(status, points, max_points, detail)
    notes: list = field(default_factory=list)
    seconds: float = 0.0


# --- finding the submissions (all checks happen here, before any kernel starts) --------------------
def _notebooks_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _read(path: Path, student: str) -> Submission:
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:                           # not JSON, not a notebook: graded as unreadable
        last = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Submission(path, student, chapter_of(_EMPTY_NB, path), None, f"not a readable notebook ({last})")
    chapter = chapter_of(nb, path)
    return Submission(path, student, chapter, nb,
                      "" if chapter else "cannot tell which chapter this is (no chapter in its metadata, no NN_ in "
                                         "its file name, no check_exercise calls)")


class _Empty:
    metadata: dict = {}
    cells: list = []


_EMPTY_NB = _Empty()


def collect(args: list[str], by: str) -> list[Submission]:
    """The submissions named on the command line; UsageError for a path that is not there or not a notebook."""
    paths = []
    for arg in args:
        path = Path(arg)
        if not path.exists():
            raise UsageError(f"{arg}: no such file or folder; pass submitted notebooks (.ipynb) or folders of them")
        if path.is_dir():
            found = _notebooks_in(path)
            if not found:
                raise UsageError(f"{arg}: no .ipynb file in this folder (or below); pass the folder that holds "
                                 "the students' notebooks")
            paths += found
        elif path.suffix != ".ipynb":
            raise UsageError(f"{arg}: not a notebook (.ipynb); pass the submitted notebooks or their folders")
        else:
            paths.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    submissions = [_read(p, p.stem if by == "file" else p.parent.name) for p in unique]
    seen: dict[tuple, Path] = {}
    for sub in submissions:
        key = (sub.student, sub.chapter)
        if sub.chapter is not None and key in seen:
            fix = ("put each student's notebooks in a folder of their own" if by == "folder"
                   else "name each file after its student")
            raise UsageError(f"student {sub.student!r} has two chapter-{sub.chapter} notebooks ({seen[key]} and "
                             f"{sub.path}): {fix}, or pass --student {'file' if by == 'folder' else 'folder'}")
        seen[key] = sub.path
    return submissions


def check_csv(out: str | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--csv {out}: that is a folder; give a file name, e.g. {path / 'grades.csv'}")
    if path.exists() and not overwrite:
        raise UsageError(f"--csv {out} exists; pass --overwrite to replace it, or choose another file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--csv {out}: folder {folder} does not exist; create it or choose another place")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--csv {out}: cannot write there (permission denied); choose a writable place")
    return path


# --- running one notebook -----------------------------------------------------------------------
GRADER_RUN_VAR = "DEEPSEEK_GRADER_RUN"                 # set in each kernel: finds what it started, to end it
CHECK_LOCK = threading.Lock()                          # checks seed torch's global RNG: one at a time


@functools.lru_cache(maxsize=1)
def _scratch_files() -> tuple[str, ...]:
    """The project files a submission's kernel gets: the student release's (no solutions, no answer
    tests), without the chapter notebooks themselves (the submission is the notebook that runs)."""
    return tuple(rel for rel in project_files() if not is_excluded(rel) and not rel.endswith(".ipynb"))


def make_scratch() -> Path:
    """A fresh copy of the project without the solutions, for one submission: its kernel imports the
    library and the checkers from here and works in its notebooks/ folder, so nothing the notebook
    reads or rewrites there is the grader's own (the grader's checks import from ROOT)."""
    scratch = Path(tempfile.mkdtemp(prefix="grade-"))
    for rel in _scratch_files():
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, target)
    (scratch / "notebooks").mkdir(exist_ok=True)
    return scratch


def kernel_env(full: bool, scratch: Path | None = None, run_id: str = "") -> dict[str, str]:
    env = dict(os.environ)
    root = str(scratch if scratch is not None else ROOT)
    # this project (or its scratch copy) first; no entry that leads back into the grader's own project
    others = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
              if p and not (Path(p).resolve() == ROOT or ROOT in Path(p).resolve().parents)]
    env["PYTHONPATH"] = os.pathsep.join([root] + others)
    env.pop("OLDPWD", None)
    if scratch is not None:
        env["PWD"] = str(scratch / "notebooks")
    if not full:
        env["DEEPSEEK_SCRATCH_FAST"] = "1"
    env.setdefault("MPLBACKEND", "Agg")                # plots need no display
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore::DeprecationWarning")
    if run_id:
        env[GRADER_RUN_VAR] = run_id
    return env


def _processes_of_run(run_id: str) -> list[int]:
    """This user's processes whose environment carries the run's id: the kernel and everything it started,
    also in a new session (a `setsid sleep` is no longer in the kernel's process group). Linux /proc only."""
    needle = f"{GRADER_RUN_VAR}={run_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):                  # gone, or not ours
            continue
    return [pid for pid in found if pid != os.getpid()]


def end_processes(pgid: int | None, run_id: str) -> None:
    """Kill the kernel's process group and every process that carries the run's id (a few rounds: one may
    fork while the others die)."""
    if pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for _ in range(5):
        pids = _processes_of_run(run_id)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _first_error(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename', 'Error')}: {str(out.get('evalue', '')).strip()}"[:200]
    return None


TIMED_OUT = "GraderTimeout"


def _run(client, cell, index: int, seconds: float) -> bool:
    """Execute one cell with a time limit; False if it was cut off. On the limit nbclient interrupts the
    kernel and hands back a synthetic error reply (error_on_timeout), so no stale reader is left behind to
    swallow the next cell's output; the reply seen by `on_cell_executed` says which happened."""
    client.timeout = max(1, math.ceil(seconds))
    client.execute_cell(cell, index, store_history=False)
    return client.last_reply.get("content", {}).get("ename") != TIMED_OUT


def _execute_extra(client, cell, seconds: float) -> bool:
    """Run a cell of the grader's own: appended to the (copied) notebook, since nbclient addresses cells
    by their index."""
    client.nb.cells.append(cell)
    return _run(client, cell, len(client.nb.cells) - 1, seconds)


def _responds(client) -> bool:
    """After a time limit: does the kernel answer again (did the interrupt stop the cell)?"""
    import nbformat

    try:
        return _execute_extra(client, nbformat.v4.new_code_cell("pass"), 30)
    except Exception:                                  # the kernel died meanwhile
        return False


class CheckStopped(BaseException):
    """The kernel did not answer a call within the check's time, died, or wrote no reply. A BaseException:
    run_check turns the student's exceptions (Exception) into a FAIL, and this one is not the student's
    function raising, so it has to get past it."""

    def __init__(self, status: str, detail: str, responsive: bool = True):
        super().__init__(detail)
        self.status, self.detail, self.responsive = status, detail, responsive


class KernelAnswer:
    """The student's function as the grader's checks see it: each call saves the arguments, runs the
    function on them in the student's kernel (exercises._grader_call, the guard on) and returns what it
    returned or raises what it raised, rebuilt from data (exercises/exchange.py). The check itself, and
    so the verdict, runs here, in the grader."""

    def __init__(self, client, exercise, folder: Path, seconds: float):
        self.client, self.exercise, self.folder = client, exercise, folder
        self.seconds, self.deadline = seconds, time.monotonic() + seconds

    def _ask(self, args_path: Path | None):
        import nbformat

        reply_path = self.folder / f"reply-{secrets.token_hex(8)}.pt"
        cell = nbformat.v4.new_code_cell(
            f"import exercises as _exercises\n_exercises._grader_call({self.exercise.id!r}, "
            f"{None if args_path is None else str(args_path)!r}, {str(reply_path)!r})")
        left = self.deadline - time.monotonic()
        try:
            if left <= 0 or not _execute_extra(self.client, cell, left):
                raise CheckStopped(FAIL, f"the check did not finish within {self.seconds:g} s (an endless loop?)",
                                   responsive=_responds(self.client))
        except CheckStopped:
            raise
        except Exception as err:                       # DeadKernelError, or nbclient lost the kernel
            raise CheckStopped(ERROR, f"not graded: the notebook's kernel died during the check ({type(err).__name__}"
                                      "; os._exit, a crash, or out of memory)", responsive=False) from None
        reply = exchange.read(reply_path)
        if reply is None or not isinstance(reply, dict):
            why = _first_error(cell) or "no reply"
            raise CheckStopped(ERROR, f"could not be checked (the kernel gave no answer: {why})")
        return reply

    def describe(self) -> dict:
        return self._ask(None)

    def __call__(self, *args, **kwargs):
        args_path = self.folder / f"args-{secrets.token_hex(8)}.pt"
        # O_EXCL | O_NOFOLLOW: a name planted by the notebook (a link to a file of the grader's) is refused
        fd = os.open(args_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as handle:
            torch.save((args, kwargs), handle)
        reply = self._ask(args_path)
        try:
            return exchange.outcome(reply, args)
        except LookupError as err:
            raise CheckStopped(ERROR, f"could not be checked ({err})") from None


def check_in_grader(client, ex, folder: Path, seconds: float) -> tuple[dict, bool]:
    """One exercise's verdict, computed here from what the kernel returns: (result, kernel responsive)."""
    def result(status, detail, points=0):
        return {"exercise": ex.id, "status": status, "points": points, "max_points": ex.points, "detail": detail,
                "written": ex.written}

    try:
        info = KernelAnswer(client, ex, folder, seconds).describe()
        if info.get("missing"):
            return result(FAIL, f"{ex.name} is not defined: its cell did not run, or raised an error"), True
        if ex.written:
            return dict(_check_written(ex, info.get("value")).__dict__), True
        if not info.get("callable"):
            return result(FAIL, f"pass your function {ex.name}, got {str(info.get('type'))[:80]}"), True
        with CHECK_LOCK:
            answer = KernelAnswer(client, ex, folder, seconds)     # the time runs from here, not from the queue
            return dict(run_check(ex, answer, guard=False).__dict__), True
    except CheckStopped as stop:
        return result(stop.status, stop.detail), stop.responsive


def grade_notebook(sub: Submission, timeout: float, check_timeout: float, full: bool) -> Graded:
    """Run the notebook in a fresh kernel, in a scratch copy of the project without the solutions, and
    check every exercise of its chapter from here (never raises). Ends every process the kernel started."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    graded = Graded(sub)
    exercises = chapter_exercises(sub.chapter)
    start = time.monotonic()

    def fail_rest(why: str) -> None:
        for eid, ex in exercises.items():
            graded.results.setdefault(eid, {"status": ERROR, "points": 0, "max_points": ex.points, "detail": why,
                                            "written": ex.written})

    if sub.nb is None:
        fail_rest(f"not graded: {sub.problem}")
        graded.notes.append(sub.problem)
        return graded
    scratch = make_scratch()
    run_id = secrets.token_hex(12)
    folder = scratch / ".grader"                      # the exchange: hidden inputs in, the student's outputs out
    folder.mkdir()
    nb = nbformat.from_dict(json.loads(json.dumps(sub.nb)))           # a copy: outputs go here, not to the file
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, record_timing=False,
                            shutdown_kernel="immediate", interrupt_on_timeout=True, iopub_timeout=10,
                            error_on_timeout={"ename": TIMED_OUT, "evalue": "time limit", "traceback": []},
                            resources={"metadata": {"path": str(scratch / "notebooks")}})
    client.last_reply = {}

    def remember(cell, cell_index, execute_reply):
        client.last_reply = execute_reply

    client.on_cell_executed = remember
    stage = "starting its kernel"
    pgid = None
    try:
        # the kernel's own stderr is its start-up chatter; what the notebook prints arrives as cell output
        with client.setup_kernel(env=kernel_env(full, scratch, run_id), stderr=subprocess.DEVNULL):
            pgid = getattr(getattr(client.km, "provisioner", None), "pgid", None)
            stage = "running it"
            responsive = True
            deadline = start + timeout
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or COLAB_TAGS & set(cell.metadata.get("tags", [])):
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    graded.notes.append(f"ran out of its {timeout:g} s before cell {index}; the rest was skipped")
                    break
                if not _run(client, cell, index, left):
                    graded.notes.append(f"cell {index} was still running after {timeout:g} s (the notebook's time "
                                        "limit): interrupted there, the rest skipped")
                    responsive = _responds(client)
                    break
                if (error := _first_error(cell)) and not any(n.startswith("cell ") and "raised" in n
                                                             for n in graded.notes):
                    graded.notes.append(f"cell {index} raised {error}")
            stage = "checking its exercises"
            for eid, ex in exercises.items():
                if not responsive:
                    fail_rest("not graded: the notebook's kernel stopped responding (a cell that ignores "
                              "interrupts?)")
                    break
                graded.results[eid], responsive = check_in_grader(client, ex, folder, check_timeout)
    except DeadKernelError:
        graded.notes.append(f"the kernel died while {stage}")
        fail_rest(f"not graded: the notebook's kernel died while {stage} (os._exit, a crash, or out of memory)")
    except Exception as err:                           # the kernel did not start, or nbclient failed: still a row
        graded.notes.append(f"failed while {stage}: {type(err).__name__}: {err}"[:200])
        fail_rest(f"not graded: the grader failed while {stage} ({type(err).__name__})")
    finally:
        end_processes(pgid, run_id)
        shutil.rmtree(scratch, ignore_errors=True)    # rmtree does not follow links the notebook left there
    graded.seconds = time.monotonic() - start
    return graded


# --- rows, table, CSV ---------------------------------------------------------------------------
def rows_of(all_graded: list[Graded]) -> tuple[list[dict], list[dict]]:
    """(one row per student and exercise, one summary row per student)."""
    rows, summary, by_student = [], [], {}
    for graded in all_graded:
        by_student.setdefault(graded.submission.student, []).append(graded)
    for student in sorted(by_student):
        total = dict(student=student, points=0, max_points=0, passed=0, checked=0, errors=0)
        to_score, notes = [], []
        for graded in sorted(by_student[student], key=lambda g: g.submission.chapter or 0):
            sub = graded.submission
            chapter = sub.chapter
            if chapter is None:
                rows.append(dict(student=student, chapter="", exercise="", kind="", status=ERROR, points=0,
                                 max_points=0, for_teacher="", hint=f"not graded: {sub.problem}", answer="",
                                 notebook=str(sub.path)))
                total["errors"] += 1
                notes.append(f"{sub.path.name}: {sub.problem}")
                continue
            earned = possible = 0
            for eid, ex in chapter_exercises(chapter).items():
                r = graded.results[eid]
                status = PASS if r["status"] == ANSWERED else r["status"]   # a written answer is there
                row = dict(student=student, chapter=chapter, exercise=eid, kind="written" if ex.written else "code",
                           status=status, max_points=ex.points, for_teacher="", notebook=str(sub.path))
                total["errors"] += status == ERROR
                if ex.written:
                    answered = r["status"] == ANSWERED
                    row.update(points="", hint="" if answered else r["detail"], answer=r["detail"] if answered else "")
                    if answered:
                        row["for_teacher"] = f"score this written answer (up to {ex.points} points)"
                        to_score.append(f"{eid} ({ex.points} points)")
                else:
                    total["checked"] += 1
                    total["passed"] += status == PASS
                    earned += r["points"]
                    possible += ex.points
                    row.update(points=r["points"], hint=r["detail"], answer="")
                rows.append(row)
            total[f"ch{chapter:02d}"], total[f"ch{chapter:02d}_max"] = earned, possible
            total["points"] += earned
            total["max_points"] += possible
            notes += [f"chapter {chapter}: {note}" for note in graded.notes]
        total["written_to_score"] = "; ".join(to_score)
        total["notes"] = "; ".join(notes)
        summary.append(total)
    return rows, summary


def summary_columns(summary: list[dict]) -> list[str]:
    chapters = [f"ch{n:02d}" for n in CHAPTER_NUMBERS if any(f"ch{n:02d}" in row for row in summary)]
    return (["student", "points", "max_points", "passed", "checked"]
            + [c for ch in chapters for c in (ch, f"{ch}_max")] + ["written_to_score", "errors", "notes"])


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A cell a spreadsheet shows as text: one that starts like a formula (=HYPERLINK(...) in a written
    answer, a student folder named '@SUM(...)') gets a leading apostrophe (the OWASP CSV-injection rule)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> None:
    """Atomically: a half-written file never replaces a good one. Every text cell is spreadsheet-safe."""
    rows = [{k: spreadsheet_safe(v) for k, v in row.items()} for row in rows]
    fd, tmp = tempfile.mkstemp(prefix=".grades-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(text: str, width: int) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: list[dict], summary: list[dict], csv_path: Path | None = None) -> str:
    """The console report: every exercise with its hint in full (wrapped), written answers shortened with
    where to read them whole, then one line per student."""
    where = (f"the whole answer: column 'answer' of {csv_path}" if csv_path is not None
             else "pass --csv FILE to save the whole answer")
    lines = [f"{'student':<16} {'ex':<5} {'status':<14} {'points':>7}  hint / written answer"]
    indent = " " * 47
    for row in rows:
        points = "written" if row["kind"] == "written" else f"{row['points']}/{row['max_points']}"
        head = f"{_short(row['student'], 16):<16} {row['exercise'] or '-':<5} {row['status']:<14} {points:>7}  "
        if row["answer"]:
            answer = _short(row["answer"], 60)
            note = answer + ("" if answer == _short(row["answer"], 10**6) else f" ({where})") + " -- to score"
        else:
            note = re.sub(r"\s+", " ", str(row["hint"])).strip()
        wrapped = textwrap.wrap(note, 70, break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(head + wrapped[0])
        lines += [indent + more for more in wrapped[1:]]
    lines += ["", f"{'student':<16} {'points':>9}  per chapter (points/max), written answers to score, notes"]
    for total in summary:
        chapters = ", ".join(f"ch{n} {total[f'ch{n:02d}']}/{total[f'ch{n:02d}_max']}" for n in CHAPTER_NUMBERS
                             if f"ch{n:02d}" in total)
        rest = [chapters] + ([f"to score: {total['written_to_score']}"] if total["written_to_score"] else []) \
            + ([f"{total['errors']} not graded (ERROR)"] if total["errors"] else []) \
            + ([total["notes"]] if total["notes"] else [])
        wrapped = textwrap.wrap("; ".join(r for r in rest if r), 90, break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines.append(f"{_short(total['student'], 16):<16} {total['points']:>4}/{total['max_points']:<4}  {wrapped[0]}")
        lines += [" " * 28 + more for more in wrapped[1:]]
    return "\n".join(lines).rstrip()


# --- command line ---------------------------------------------------------------------------------
def build_parser() -> CommandLine:
    parser = CommandLine(prog="python -m exercises grade",
                         description="Run submitted chapter notebooks and grade their exercises "
                                     "(see docs/teaching.md).")
    parser.add_argument("paths", nargs="+", metavar="NOTEBOOK_OR_FOLDER",
                        help="submitted notebooks, or folders holding them (searched recursively)")
    parser.add_argument("--csv", metavar="OUT", help="also write the rows to this CSV file")
    parser.add_argument("--summary", metavar="OUT", help="write one row per student (points per chapter, written "
                        "answers to score) to this CSV (default with --csv: OUT_summary.csv next to it)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --csv / --summary files if they exist")
    parser.add_argument("--student", choices=("folder", "file"), default="folder",
                        help="name students by the folder a notebook is in, or by its file name")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds each notebook may run before the running cell is interrupted")
    parser.add_argument("--check-timeout", type=float, default=120.0, help="seconds each exercise's check may take")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks graded at the same time (each in its own kernel); more needs more cores")
    parser.add_argument("--full", action="store_true",
                        help="run the notebooks in reading mode (default: DEEPSEEK_SCRATCH_FAST=1, the CI sizes)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for flag, seconds in (("--timeout", args.timeout), ("--check-timeout", args.check_timeout)):
            if not (math.isfinite(seconds) and 0 < seconds <= 7 * 24 * 3600):   # nan passed `<= 0`
                raise UsageError(f"{flag} {seconds:g}: must be a finite number of seconds > 0 (at most a week)")
        if args.jobs < 1:
            raise UsageError(f"--jobs {args.jobs}: must be at least 1")
        csv_path = check_csv(args.csv, args.overwrite)
        summary_arg = args.summary
        if summary_arg is None and csv_path is not None:
            summary_arg = str(csv_path.with_name(csv_path.stem + "_summary.csv"))
        summary_path = check_csv(summary_arg, args.overwrite)
        if summary_path is not None and csv_path is not None and summary_path.resolve() == csv_path.resolve():
            raise UsageError("--summary and --csv name the same file; choose two")
        submissions = collect(args.paths, args.student)
    except UsageError as err:
        parser.error(str(err))
    def grade_one(sub: Submission) -> Graded:
        label = f"{sub.student}: {sub.path.name}" + (f" (chapter {sub.chapter})" if sub.chapter else "")
        if sub.chapter is None:
            print(f"{label}: {sub.problem}", file=sys.stderr, flush=True)
            return Graded(sub, notes=[sub.problem])
        graded = grade_notebook(sub, args.timeout, args.check_timeout, args.full)
        print(f"graded {label} in {graded.seconds:.1f} s", file=sys.stderr, flush=True)
        return graded

    # threads are enough: each notebook runs in its own kernel process; the grader only waits on them
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        graded = list(pool.map(grade_one, submissions))
    rows, summary = rows_of(graded)
    print(table(rows, summary, csv_path))
    if csv_path is not None:
        write_csv(rows, csv_path)
        print(f"\nwrote {len(rows)} rows to {csv_path}")
    if summary_path is not None:
        write_csv(summary, summary_path, summary_columns(summary))
        print(f"wrote {len(summary)} student rows to {summary_path}")
    return 0
