"""python -m exercises release OUT_DIR: the copy of this project a teacher hands to students.

What differs from the project:
- no `notebooks/solutions/`, and none of the tests that hold right answers (tests/test_exercises_*.py,
  tests/exercise_checks.py, the release and grading tests);
- every exercise cell of the chapter notebooks is reset to its stub (the signature and its comments,
  then `raise NotImplementedError`; a written answer to an empty string), and the check and score
  cells show what an untouched stub prints, so a teacher who tried the exercises in their copy hands
  out clean notebooks (the other cells keep their outputs: figures and tables stay visible);
- the pointer to the solutions is taken out of each chapter's exercise section;
- README.md starts with a note that this is a student release.

The checkers (exercises/) are copied as they are: they hold no answers. Their expected values come
from the library the students also get (the chapters teach it), from probes with closed-form results,
or from hashes, and the library functions an exercise asks for are switched off while an answer runs.
The grader (`python -m exercises grade`) runs against the release the same way as against the project.

The files are those git tracks (plus untracked files git does not ignore), or, outside a git work
tree, every file but caches, virtual environments and checkpoints. The release is written into a
temporary folder beside OUT_DIR and renamed into place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.cli import CommandLine, UsageError
from exercises import CHAPTERS, chapter_exercises
from exercises.notebook import chapter_of, defines_answer, score_outputs, stub_check_outputs, stub_source

ROOT = Path(__file__).resolve().parent.parent
# Files that hold answers (or test them with answers): not for students.
EXCLUDED = ("notebooks/solutions/", "tests/test_exercises_", "tests/exercise_checks.py", "tests/test_grading.py",
            "tests/test_release.py")
# Outside git: what never belongs in a copy (the .gitignore's entries, plus the repository itself).
SKIPPED_PARTS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints",
                 "checkpoints", "runs", "out", "cache"}
README_NOTE = """> **Student release.** This copy of the project has the exercises without their solutions. Work in the
> chapter notebooks (`notebooks/`); each exercise's check cell prints `PASS`, `FAIL` with a hint, or `NOT ATTEMPTED`,
> and the last cell of a chapter adds up its points. Hand in the notebooks as your teacher asks.

"""


def release_readme(text: str) -> str:
    """The README of the student copy: the release note first, and no pointer to the solutions, which the copy
    does not have (a sentence that names them is dropped; "(+ solutions/)" in the layout list goes)."""
    text = re.sub(r"[ \t]*\(\+ solutions/\)", "", text)
    sentences = (r"(?<![^\s])[^.\n]*(?:\n(?!\n)[^.\n]*)*?(?:notebooks/solutions|[Ss]olutions notebook)"
                 r"[^.\n]*\.(?=\s|$)[ \t]*")
    text = re.sub(sentences, "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return README_NOTE + text


def project_files() -> list[str]:
    """Paths (relative, posix) of the files to copy, before exclusions."""
    try:
        command = ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        listed = subprocess.run(command, capture_output=True, check=True).stdout.decode().split("\0")
        files = [f for f in listed if f and (ROOT / f).is_file()]
        if files:
            return sorted(set(files))
    except (OSError, subprocess.CalledProcessError):
        pass                                            # no git, or not a work tree: walk the folder
    files = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and not (set(rel.parts) & SKIPPED_PARTS) and not any(
                p.endswith(".egg-info") for p in rel.parts) and path.suffix != ".pt":
            files.append(rel.as_posix())
    return sorted(files)


def is_excluded(rel: str) -> bool:
    return any(rel.startswith(prefix) for prefix in EXCLUDED)


def check_out_dir(text: str) -> Path:
    if Path(text).expanduser().is_symlink():          # the release is never written through a link
        raise UsageError(f"{text} is a symbolic link; pass the real folder (a new or empty one)")
    out = Path(text).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{text} is a file; choose a folder that does not exist yet (or an empty one)")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{text} is not empty; choose a new or empty folder (nothing was written)")
    if out == ROOT or ROOT in out.parents:
        raise UsageError(f"{text} is inside the project ({ROOT}); choose a folder outside it")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{text}: cannot create it, {ancestor} is not writable; choose another place")
    return out


def release_notebook(nb, path: Path | None = None) -> object:
    """A chapter notebook with its exercise cells reset to their stubs (in place; returned)."""
    chapter = chapter_of(nb, path)
    if chapter not in CHAPTERS:
        return nb
    exercises = chapter_exercises(chapter)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "## Exercises" in cell.source:
            cell.source = re.sub(r"\n*^Solutions: `notebooks/solutions/[^`]*`\.?[ \t]*$", "", cell.source,
                                 flags=re.M).rstrip()
        if cell.cell_type != "code":
            continue
        for exercise in exercises.values():
            if defines_answer(cell, exercise):
                cell.source = stub_source(cell.source, exercise)
                cell.outputs, cell.execution_count = [], None
            elif re.search(rf"check_exercise\(\s*[\"']{re.escape(exercise.id)}[\"']", cell.source):
                cell.outputs = stub_check_outputs(exercise.id)
        if re.search(rf"chapter_score\(\s*{chapter}\s*\)", cell.source):
            cell.outputs = score_outputs(chapter)
    return nb


def write_release(out: Path) -> tuple[int, int]:
    """Copy and transform the project into `out`; returns (files written, notebooks reset)."""
    import nbformat

    files = [f for f in project_files() if not is_excluded(f)]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    reset = 0
    try:
        for rel in files:
            source, target = ROOT / rel, staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel.startswith("notebooks/") and rel.count("/") == 1 and rel.endswith(".ipynb"):
                nb = release_notebook(nbformat.read(source, as_version=4), source)
                nbformat.write(nb, target)
                reset += 1
            elif rel == "README.md":
                target.write_text(release_readme(source.read_text(encoding="utf-8")), encoding="utf-8")
            else:
                shutil.copy2(source, target)
        if out.is_dir():
            out.rmdir()                                 # checked empty before any work
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(files), reset


def main(argv: list[str]) -> int:
    parser = CommandLine(prog="python -m exercises release",
                         description="Write the student release of this project: no solutions, exercise cells "
                                     "reset to their stubs (see docs/teaching.md).")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a folder that does not exist yet (or is empty), outside "
                                                           "the project")
    args = parser.parse_args(argv)
    try:
        out = check_out_dir(args.out_dir)
    except UsageError as err:
        parser.error(str(err))
    n_files, n_notebooks = write_release(out)
    print(f"wrote the student release to {out}: {n_files} files, {n_notebooks} chapter notebooks with their "
          f"exercises reset; no solutions, no answer tests")
    print(f"grade the notebooks students hand back with: cd {out} && python -m exercises grade SUBMISSIONS/ "
          "--csv grades.csv", file=sys.stderr)
    return 0
