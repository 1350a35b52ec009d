"""Checkers for the chapter exercises: `check_exercise("3.2", my_function)`.

Each chapter module (`exercises/chNN.py`) maps exercise ids to a check that calls the student's
function on hidden cases and raises AssertionError with a hint when an answer is wrong. The
checker never raises itself, so a notebook with unfinished exercises still runs top to bottom
(CI executes every notebook): it prints and returns one of PASS / FAIL / NOT ATTEMPTED.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable

PASS, FAIL, NOT_ATTEMPTED = "PASS", "FAIL", "NOT ATTEMPTED"


def _find_check(exercise_id: str) -> Callable:
    chapter = exercise_id.split(".")[0]
    try:
        module = importlib.import_module(f"exercises.ch{int(chapter):02d}")
    except (ImportError, ValueError) as err:
        raise KeyError(f"no exercises for chapter {chapter!r}") from err
    if exercise_id not in module.CHECKS:
        raise KeyError(f"unknown exercise {exercise_id!r}; chapter {chapter} has {sorted(module.CHECKS)}")
    return module.CHECKS[exercise_id]


def check_exercise(exercise_id: str, student_fn: Callable, verbose: bool = True) -> str:
    """Run the hidden cases of one exercise against `student_fn`; print and return the verdict."""
    check = _find_check(exercise_id)
    try:
        check(student_fn)
        status, detail = PASS, ""
    except NotImplementedError:
        status, detail = NOT_ATTEMPTED, "fill in the function body (it still raises NotImplementedError)"
    except AssertionError as err:
        status, detail = FAIL, str(err) or "an answer did not match"
    except Exception as err:  # a crash in student code is a FAIL with its last line, never an exception here
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        status, detail = FAIL, f"your function raised {last}"
    if verbose:
        print(f"Exercise {exercise_id}: {status}" + (f" - {detail}" if detail else ""))
    return status
