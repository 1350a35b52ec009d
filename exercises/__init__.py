"""Exercises of the chapters: `check_exercise("3.2", my_function)`, `chapter_score(3)`, and the grader.

Each chapter module (`exercises/chNN.py`) lists its exercises in `EXERCISES`: the name of the function
(or, for a written answer, the string variable) the notebook defines, the points, the check (hidden
cases that raise AssertionError with a hint on a wrong answer) and the library functions the exercise
asks the student to write, which are switched off while the answer runs (exercises/guard.py).

`check_exercise` never raises for a student's mistake, so a notebook with unfinished exercises still
runs top to bottom (CI executes every notebook): it prints one line and returns the verdict, PASS /
FAIL / NOT ATTEMPTED, or ANSWERED for a written answer (read by a person, never scored here). It also
records the verdict, which `chapter_score(N)` sums up at the end of a chapter. `python -m exercises`
grades submitted notebooks and writes the student release (exercises/grade.py, exercises/release.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from exercises import exchange
from exercises.guard import Delegated, forbidding

PASS, FAIL, NOT_ATTEMPTED, ANSWERED = "PASS", "FAIL", "NOT ATTEMPTED", "ANSWERED"
NOT_CHECKED = "NOT CHECKED"
CHAPTERS = tuple(range(1, 9))
STUB_HINT = "fill in the function body (it still raises NotImplementedError)"
WRITTEN_STUB_HINT = "write your answer between the quotes"


@dataclass(frozen=True)
class Exercise:
    """One exercise. `check` is None for a written answer (a person reads it)."""

    id: str
    name: str                         # the function (or answer variable) the notebook defines
    points: int
    check: Callable | None = None
    forbidden: tuple = ()             # library callables the answer must not use (it is asked to write them)
    why: str = ""                     # what to do instead, appended to the delegation hint

    @property
    def written(self) -> bool:
        return self.check is None

    def delegation_hint(self, called: list[str]) -> str:
        names = " and ".join(f"`{name}`" for name in called)
        return (f"your answer calls the library's {names}, which is what this exercise asks you to write "
                f"(the checker switches it off); {self.why or 'write it yourself'}")


@dataclass(frozen=True)
class Result:
    exercise: str
    status: str
    points: int                       # earned; 0 for a written answer (a person scores it)
    max_points: int
    detail: str = ""                  # the hint (FAIL, NOT ATTEMPTED) or the text of a written answer
    written: bool = False


class Status(str):
    """A verdict ('PASS', ...): compares as a string; a notebook does not echo it under the printed line."""

    def _ipython_display_(self) -> None:
        pass


def fingerprint(values, decimals: int = 4) -> str:
    """A short hash of a tensor's shape and values rounded to `decimals`: lets a checker hold the expected
    output of a hand-made case without holding the answer (exercises/ch04.py)."""
    import torch

    values = torch.as_tensor(values, dtype=torch.float64)
    rounded = [round(float(v), decimals) + 0.0 for v in values.flatten()]     # + 0.0: -0.0 becomes 0.0
    return hashlib.sha256(json.dumps([list(values.shape), rounded]).encode()).hexdigest()[:16]


# What check_exercise saw in this Python process (a notebook's kernel): the chapter's score and the grader read it.
_RESULTS: dict[str, Result] = {}
_SUBMITTED: dict[str, object] = {}


def chapter_exercises(chapter: int) -> dict[str, Exercise]:
    try:
        module = importlib.import_module(f"exercises.ch{int(chapter):02d}")
    except (ImportError, ValueError) as err:
        raise KeyError(f"no exercises for chapter {chapter!r}") from err
    return module.EXERCISES


def find(exercise_id: str) -> Exercise:
    chapter = str(exercise_id).split(".")[0]
    exercises = chapter_exercises(chapter)
    if exercise_id not in exercises:
        raise KeyError(f"unknown exercise {exercise_id!r}; chapter {chapter} has {sorted(exercises)}")
    return exercises[exercise_id]


def _check_written(exercise: Exercise, answer) -> Result:
    if not isinstance(answer, str):
        return Result(exercise.id, FAIL, 0, exercise.points,
                      f"assign your answer to {exercise.name} as a string, got {type(answer).__name__}", True)
    if not answer.strip():
        return Result(exercise.id, NOT_ATTEMPTED, 0, exercise.points, WRITTEN_STUB_HINT, True)
    return Result(exercise.id, ANSWERED, 0, exercise.points, answer.strip(), True)


def run_check(exercise: Exercise, answer, guard: bool = True) -> Result:
    """The verdict on one answer; never raises for a mistake in the answer. guard=False: `answer` switches
    the forbidden functions off itself (the grader's proxy: the guard runs in the student's kernel, and
    swapping library code in the grader would reach the checks of other notebooks graded meanwhile)."""
    if exercise.written:
        return _check_written(exercise, answer)
    if not callable(answer):
        return Result(exercise.id, FAIL, 0, exercise.points,
                      f"pass your function {exercise.name}, got {type(answer).__name__}")
    try:
        student = forbidding(answer, exercise.forbidden, exercise.delegation_hint) if exercise.forbidden and guard \
            else answer
        exercise.check(student)
        return Result(exercise.id, PASS, exercise.points, exercise.points)
    except NotImplementedError:
        return Result(exercise.id, NOT_ATTEMPTED, 0, exercise.points, STUB_HINT)
    except Delegated as err:
        return Result(exercise.id, FAIL, 0, exercise.points, str(err))
    except AssertionError as err:
        return Result(exercise.id, FAIL, 0, exercise.points, str(err) or "an answer did not match")
    except Exception as err:  # a crash in student code is a FAIL with its last line, never an exception here
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return Result(exercise.id, FAIL, 0, exercise.points, f"your function raised {last}")


def verdict_line(result: Result) -> str:
    if result.written:
        line = f"Exercise {result.exercise}: {result.status} (written, {result.max_points} points"
        if result.status == ANSWERED:
            return line + f": your teacher reads it; {len(result.detail.split())} words)"
        return line + f") - {result.detail}"
    line = f"Exercise {result.exercise}: {result.status} ({result.points}/{result.max_points} points)"
    return line + (f" - {result.detail}" if result.detail else "")


def check_exercise(exercise_id: str, answer, verbose: bool = True) -> Status:
    """Check `answer` (a function, or the text of a written answer); print and return the verdict."""
    exercise = find(exercise_id)
    result = run_check(exercise, answer)
    _RESULTS[exercise_id], _SUBMITTED[exercise_id] = result, answer
    if verbose:
        print(verdict_line(result))
    return Status(result.status)


@dataclass(frozen=True)
class Score:
    chapter: int
    points: int                       # earned on the automatically checked exercises
    max_points: int
    written_points: int               # what the written answers are worth (a person scores them)

    def _ipython_display_(self) -> None:     # printed by chapter_score already
        pass


def stub_result(exercise: Exercise) -> Result:
    """The verdict on the untouched stub (what a fresh notebook's check cell prints)."""
    hint = WRITTEN_STUB_HINT if exercise.written else STUB_HINT
    return Result(exercise.id, NOT_ATTEMPTED, 0, exercise.points, hint, exercise.written)


def score_lines(chapter: int, results: dict[str, Result]) -> tuple[Score, list[str]]:
    """The chapter's score from `results` (exercise id -> Result; a missing id was not checked)."""
    exercises = chapter_exercises(chapter)
    auto = [e for e in exercises.values() if not e.written]
    written = [e for e in exercises.values() if e.written]
    earned = sum(results[eid].points for eid in exercises if eid in results)
    score = Score(chapter, earned, sum(e.points for e in auto), sum(e.points for e in written))
    lines = [f"Chapter {chapter}: {score.points} of {score.max_points} points"
             + (f" (+ {score.written_points} for the written answer, read by your teacher)" if written else "")]
    for eid, exercise in exercises.items():
        result = results.get(eid)
        status = result.status if result is not None else NOT_CHECKED
        if exercise.written:
            column = f"written, {exercise.points} points"
        else:
            column = f"{result.points if result is not None else 0}/{exercise.points}"
        lines.append(f"  {eid:<5} {status:<14} {column}" + (" - run its check cell" if result is None else ""))
    return score, lines


def chapter_score(chapter: int) -> Score:
    """Print the chapter's score from the checks run in this notebook (this kernel) so far."""
    score, lines = score_lines(chapter, _RESULTS)
    print("\n".join(lines))
    return score


_MISSING = object()


def _answer_of(exercise: Exercise):
    """What the grader checks: the last answer passed to check_exercise, or else the notebook's variable of
    the exercise's name; _MISSING if neither."""
    import __main__

    return _SUBMITTED.get(exercise.id, vars(__main__).get(exercise.name, _MISSING))


def _grader_call(exercise_id: str, args_path: str | None, reply_path: str) -> None:
    """Run by the grader (exercises/grade.py) in the submitted notebook's kernel, after the notebook ran.
    With args_path None: say what the answer is (missing, not callable, or a written answer's text).
    Otherwise: call the student's function on the arguments the grader saved there (the hidden inputs),
    with the forbidden library functions switched off, and write back what it returned or raised. The
    verdict is computed by the grader from this reply, never here (exercises/exchange.py)."""
    exercise = find(exercise_id)
    answer = _answer_of(exercise)
    if args_path is None:
        if answer is _MISSING:
            reply = {"missing": True}
        else:
            reply = {"callable": callable(answer), "type": type(answer).__name__,
                     "value": exchange.portable(answer) if exercise.written else None}
        exchange.write(reply, reply_path)
        return
    # unsafe on purpose: the grader's own pickle of the hidden inputs (modules, configs), read in the student's
    # kernel only, which runs the student's code anyway
    args, kwargs = torch.load(args_path, weights_only=False)  # unsafe on purpose
    try:
        student = forbidding(answer, exercise.forbidden, exercise.delegation_hint) if exercise.forbidden else answer
        returned = student(*args, **kwargs)
        reply = {"returned": exchange.portable(returned), **exchange.gradients(returned, args)}
    except Exception as err:               # the student's exception, as data; an interrupt stops the call
        reply = {"raised": exchange.describe_exception(err)}
    exchange.write(reply, reply_path)
