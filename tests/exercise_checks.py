"""The three checks every chapter's exercise tests share, built from that chapter's cases.

    test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint = \
        exercise_checks(CORRECT, WRONG)

CORRECT maps an exercise id to a right answer; WRONG lists (exercise id, wrong function, a hint the
FAIL line must contain). Pytest collects the returned functions under the names they are bound to.
"""

import pytest

from exercises import FAIL, NOT_ATTEMPTED, PASS, check_exercise


def stub(*args, **kwargs):
    raise NotImplementedError


def exercise_checks(correct: dict, wrong: list):
    @pytest.mark.parametrize("exercise_id", sorted(correct))
    def test_stub_is_not_attempted(exercise_id):
        assert check_exercise(exercise_id, stub, verbose=False) == NOT_ATTEMPTED

    @pytest.mark.parametrize("exercise_id", sorted(correct))
    def test_correct_answer_passes(exercise_id):
        assert check_exercise(exercise_id, correct[exercise_id], verbose=False) == PASS

    @pytest.mark.parametrize(("exercise_id", "wrong_fn", "hint"), wrong, ids=[w[1].__name__ for w in wrong])
    def test_wrong_answer_fails_with_a_hint(exercise_id, wrong_fn, hint, capsys):
        assert check_exercise(exercise_id, wrong_fn, verbose=False) == FAIL
        check_exercise(exercise_id, wrong_fn, verbose=True)
        printed = capsys.readouterr().out
        assert printed.startswith(f"Exercise {exercise_id}: FAIL") and hint in printed

    return test_stub_is_not_attempted, test_correct_answer_passes, test_wrong_answer_fails_with_a_hint
