"""The checks every chapter's exercise tests share, built from that chapter's cases.

    test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
        exercise_checks(CORRECT, WRONG)

CORRECT maps every exercise id of the chapter to a right answer (a function, or for a written exercise
a text); WRONG lists (exercise id, wrong function, a phrase the FAIL line must contain), including the
answers that only call the library function the exercise asks for. Pytest collects the returned
functions under the names they are bound to.
"""

import pytest

from exercises import ANSWERED, FAIL, NOT_ATTEMPTED, PASS, chapter_exercises, check_exercise, find


def stub(*args, **kwargs):
    raise NotImplementedError


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

    @pytest.mark.parametrize(("exercise_id", "wrong_fn", "hint"), wrong, ids=[w[1].__name__ for w in wrong])
    def test_wrong_answer_fails_with_a_hint(exercise_id, wrong_fn, hint, capsys):
        assert check_exercise(exercise_id, wrong_fn, verbose=False) == FAIL
        check_exercise(exercise_id, wrong_fn, verbose=True)
        printed = capsys.readouterr().out
        assert printed.startswith(f"Exercise {exercise_id}: FAIL") and hint in printed, printed

    return (test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
            test_wrong_answer_fails_with_a_hint)
