"""python -m exercises release OUT_DIR, then python -m exercises grade against that copy: the solutions filled
into one chapter's stubs grade full points, the untouched release grades zero, and an answer that hands an
exercise to the library grades zero for that exercise. Chapter 2 is used: its notebook runs in seconds in FAST
mode, and its exercise 2.1 has a natural library shortcut (read the module's own cache after a forward)."""

from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from exercises import chapter_exercises
from exercises.notebook import chapter_of, defines_answer

ROOT = Path(__file__).resolve().parent.parent
CHAPTER, NAME = 2, "02_multi_head_latent_attention"
DELEGATING_2_1 = '''from components.kv_cache import LayerCache


def mla_cache_entries(mla, x, start):
    cache = LayerCache()
    if start:                                         # any tokens, just to reach position start
        mla(torch.zeros(x.shape[0], start, x.shape[2]), cache=cache)
    mla(x, cache=cache)                               # the module fills its cache ...
    held = cache.tensors()
    return held["c_kv"][:, start:], held["k_rope"][:, start:]   # ... and the answer reads it back'''


def run(*args, cwd):
    # the project runs from its clone: from another folder, its root goes on the import path
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "exercises", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def fill(nb, solutions, overrides=None):
    """A copy of the release notebook with every exercise cell replaced by the solution's (or an override)."""
    nb = copy.deepcopy(nb)
    imports = next(c.source for c in solutions.cells if c.cell_type == "code" and "from exercises import" in c.source)
    first = None
    for exercise in chapter_exercises(CHAPTER).values():
        answer = next(c for c in solutions.cells if defines_answer(c, exercise))
        cell = next(c for c in nb.cells if defines_answer(c, exercise))
        cell.source = (overrides or {}).get(exercise.id, answer.source)
        first = first if first is not None else nb.cells.index(cell)
    nb.cells.insert(first, nbformat.v4.new_code_cell(imports))        # what the solutions import, as a student would
    return nb


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "course"
    done = run("release", str(out), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return out


def test_the_release_holds_no_answers(release):
    assert not (release / "notebooks" / "solutions").exists()
    assert not list((release / "tests").glob("test_exercises_*.py"))
    assert not (release / "tests" / "test_release.py").exists()
    assert not (release / "tests" / "exercise_checks.py").exists()
    assert not [p.name for p in (release / "tests").rglob("*.py") if "solutions" in p.read_text()]
    assert (release / "exercises" / "grade.py").is_file() and (release / "components").is_dir()
    readme = (release / "README.md").read_text()
    assert readme.startswith("> **Student release.**")
    assert "notebooks/solutions" not in readme and "solutions/" not in readme     # the copy has none
    assert "solutions notebook" not in readme.lower()
    # no line of a solution's answer (30 characters or more) appears in the checkers
    norm = lambda text: re.sub(r"\s+", "", text)                          # noqa: E731
    for path in sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb")):
        solutions = nbformat.read(path, as_version=4)
        chapter = chapter_of(solutions)
        checker = norm((release / "exercises" / f"ch{chapter:02d}.py").read_text())
        for exercise in chapter_exercises(chapter).values():
            answer = next(c for c in solutions.cells if defines_answer(c, exercise))
            for line in answer.source.splitlines():
                code = line.split("#")[0].strip()
                if len(code) >= 30 and not code.startswith(("def ", "print(")) and not exercise.written:
                    assert norm(code) not in checker, (exercise.id, code)


def test_the_release_notebooks_are_the_chapters_with_stubs(release):
    """The chapter notebooks already hold stubs: the release changes nothing in them but the solutions pointer."""
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        ours, theirs = (nbformat.read(p, as_version=4) for p in (path, release / "notebooks" / path.name))
        assert len(ours.cells) == len(theirs.cells)
        for a, b in zip(ours.cells, theirs.cells, strict=True):
            if a.cell_type == "markdown" and "## Exercises" in a.source:
                assert "notebooks/solutions/" in a.source and "notebooks/solutions/" not in b.source
                assert b.source in a.source
            else:
                assert (a.source, a.get("outputs")) == (b.source, b.get("outputs")), path.name


def test_release_readme_drops_every_pointer_to_the_solutions():
    from exercises.release import release_readme

    text = ("Intro. Solutions are in `notebooks/solutions/`. The committed notebooks\nare executed.\n\n"
            "notebooks/             chapter notebooks (+ solutions/), executed in CI\n\n"
            "| 8 | 20 s |\n\nEach solutions notebook takes 3-10 s in either mode.\n\n### Next\n")
    out = release_readme(text)
    assert out.startswith("> **Student release.**")
    assert "Intro. The committed notebooks\nare executed." in out
    assert "notebooks/             chapter notebooks, executed in CI" in out
    assert "solutions notebook" not in out and "solutions/" not in out and "### Next" in out
    assert "solutions/" not in release_readme((ROOT / "README.md").read_text())


def test_a_teacher_copy_with_answers_is_reset(release, tmp_path):
    """Exercise cells filled in the teacher's copy come out of the release as stubs again."""
    solutions = nbformat.read(ROOT / "notebooks" / "solutions" / f"{NAME}_solutions.ipynb", as_version=4)
    filled = fill(nbformat.read(release / "notebooks" / f"{NAME}.ipynb", as_version=4), solutions)
    from exercises.release import release_notebook

    reset = release_notebook(copy.deepcopy(filled))
    stubs = {e.id: next(c for c in reset.cells if defines_answer(c, e)).source
             for e in chapter_exercises(CHAPTER).values()}
    assert all(s.rstrip().endswith("raise NotImplementedError") for e, s in stubs.items() if e != "2.4")
    assert stubs["2.4"].endswith('answer_2_4 = """\n"""')
    original = nbformat.read(ROOT / "notebooks" / f"{NAME}.ipynb", as_version=4)
    assert stubs["2.1"] == next(c.source for c in original.cells if defines_answer(c, chapter_exercises(2)["2.1"]))


def test_bad_out_dir_is_one_line_and_writes_nothing(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for target, expected in [(taken, "is not empty"), (taken / "keep.txt", "is a file"),
                             (ROOT / "release_here", "inside the project")]:
        done = run("release", str(target), cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    assert not (ROOT / "release_here").exists()


def test_graded_from_the_release_full_zero_and_delegating(release, tmp_path):
    """Three students hand in chapter 2: the solutions, the untouched release, and the solutions with 2.1
    handed to the module. Graded from the release, in fresh kernels."""
    notebook = nbformat.read(release / "notebooks" / f"{NAME}.ipynb", as_version=4)
    solutions = nbformat.read(ROOT / "notebooks" / "solutions" / f"{NAME}_solutions.ipynb", as_version=4)
    subs = tmp_path / "submissions"
    for student, nb in [("ada", fill(notebook, solutions)), ("bo", notebook),
                        ("cy", fill(notebook, solutions, {"2.1": DELEGATING_2_1}))]:
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / f"{NAME}.ipynb")
    grades = tmp_path / "grades.csv"
    done = run("grade", str(subs), "--csv", str(grades), "--jobs", "3", cwd=release)
    assert done.returncode == 0, done.stderr
    with open(grades, newline="", encoding="utf-8") as handle:
        rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(handle)}
    with open(tmp_path / "grades_summary.csv", newline="", encoding="utf-8") as handle:
        totals = {r["student"]: r for r in csv.DictReader(handle)}

    assert [rows["ada", e]["status"] for e in ("2.1", "2.2", "2.3", "2.4")] == ["PASS", "PASS", "PASS", "PASS"]
    assert rows["ada", "2.4"]["for_teacher"].startswith("score this written answer")
    assert (totals["ada"]["points"], totals["ada"]["max_points"]) == ("10", "10")
    assert (totals["ada"]["ch02"], totals["ada"]["ch02_max"]) == ("10", "10")
    assert "2.4" in totals["ada"]["written_to_score"]
    assert rows["ada", "2.4"]["answer"].startswith("RoPE rotates a key")       # the written answer, for the teacher

    assert all(rows["bo", e]["status"] == "NOT ATTEMPTED" for e in ("2.1", "2.2", "2.3", "2.4"))
    assert totals["bo"]["points"] == "0" and totals["bo"]["written_to_score"] == ""

    assert rows["cy", "2.1"]["status"] == "FAIL" and rows["cy", "2.1"]["points"] == "0"
    assert "MultiHeadLatentAttention.forward" in rows["cy", "2.1"]["hint"]
    assert [rows["cy", e]["status"] for e in ("2.2", "2.3")] == ["PASS", "PASS"]
    assert totals["cy"]["points"] == "7"
    assert "ada" in done.stdout and "grades_summary.csv" in done.stdout       # the printed table and summary
