"""The checks every chapter's exercise tests share, built from that chapter's cases.

    test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
        exercise_checks(CORRECT, WRONG)

CORRECT maps every exercise id of the chapter to a right answer (a function, or for a written exercise
a text); WRONG lists (exercise id, wrong function, a phrase the FAIL line must contain), including the
answers that only call the library function the exercise asks for. Pytest collects the returned
functions under the names they are bound to.
"""

import itertools

import pytest
import torch

import exercises
from exercises import ANSWERED, FAIL, NOT_ATTEMPTED, PASS, chapter_exercises, check_exercise, exchange, find, run_check


def stub(*args, **kwargs):
    raise NotImplementedError


def through_the_exchange(exercise_id: str, answer, folder):
    """The verdict as the grader computes it: the check runs here, and each call of the answer goes through the
    kernel's side of the exchange (exercises._grader_call: arguments from a file, the guard on, the reply as
    data) -- the same code a submitted notebook's kernel runs, called in this process."""
    exercises._SUBMITTED[exercise_id] = answer
    names = itertools.count()

    def call(*args, **kwargs):
        n = next(names)
        torch.save((args, kwargs), folder / f"args-{n}.pt")
        exercises._grader_call(exercise_id, str(folder / f"args-{n}.pt"), str(folder / f"reply-{n}.pt"))
        return exchange.outcome(exchange.read(folder / f"reply-{n}.pt"), args)

    try:
        return run_check(find(exercise_id), call, guard=False).status
    finally:
        exercises._SUBMITTED.pop(exercise_id, None)


def exercise_checks(correct: dict, wrong: list):
    chapter = int(next(iter(correct)).split(".")[0])

    def test_every_exercise_has_a_correct_answer():
        assert sorted(correct) == sorted(chapter_exercises(chapter))

    @pytest.mark.parametrize("exercise_id", sorted(correct))
    def test_stub_is_not_attempted(exercise_id):
        blank = "  \n" if find(exercise_id).written else stub
        assert check_exercise(exercise_id, blank, verbose=False) == NOT_ATTEMPTED

    @pytest.mark.parametrize("exercise_id", sorted(correct))
    def test_correct_answer_passes(exercise_id):
        want = ANSWERED if find(exercise_id).written else PASS
        assert check_exercise(exercise_id, correct[exercise_id], verbose=False) == want

    @pytest.mark.parametrize("exercise_id", sorted(e for e in correct if not find(e).written))
    def test_the_graders_verdicts_through_the_exchange(exercise_id, tmp_path):
        """Right answers pass, wrong ones (delegating ones too) fail, when the check runs in the grader and
        the answer in a kernel: hidden inputs and outputs survive the trip."""
        assert through_the_exchange(exercise_id, correct[exercise_id], tmp_path) == PASS
        for wrong_id, wrong_fn, _ in wrong:
            if wrong_id == exercise_id:
                assert through_the_exchange(exercise_id, wrong_fn, tmp_path) == FAIL, wrong_fn.__name__

    @pytest.mark.parametrize(("exercise_id", "wrong_fn", "hint"), wrong, ids=[w[1].__name__ for w in wrong])
    def test_wrong_answer_fails_with_a_hint(exercise_id, wrong_fn, hint, capsys):
        assert check_exercise(exercise_id, wrong_fn, verbose=False) == FAIL
        check_exercise(exercise_id, wrong_fn, verbose=True)
        printed = capsys.readouterr().out
        assert printed.startswith(f"Exercise {exercise_id}: FAIL") and hint in printed, printed

    return (test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
            test_wrong_answer_fails_with_a_hint, test_the_graders_verdicts_through_the_exchange)
