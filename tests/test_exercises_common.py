"""What every chapter's exercises share: the points in the notebooks match the checkers, every exercise has its
stub, check cell and solution, the chapter ends with its score, and the library switch-off is temporary."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch

from components.attention import causal_mask
from components.router import Router
from exercises import (
    _RESULTS,
    CHAPTERS,
    NOT_ATTEMPTED,
    PASS,
    Status,
    chapter_exercises,
    chapter_score,
    check_exercise,
    fingerprint,
)
from exercises.guard import Delegated, forbidding, switched_off
from exercises.notebook import chapter_of, defines_answer, score_outputs, stub_check_outputs

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def chapter_notebook(n: int, solutions: bool = False):
    folder = NOTEBOOKS / "solutions" if solutions else NOTEBOOKS
    (path,) = folder.glob(f"0{n}_*.ipynb")
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("solutions", [False, True], ids=["chapter", "solutions"])
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_notebook_states_the_points_and_has_every_exercise(chapter, solutions):
    nb = chapter_notebook(chapter, solutions)
    assert chapter_of(nb) == chapter                                           # the grader reads it from metadata
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    stated = {m.group(1): (int(m.group(3)), bool(m.group(2)))
              for m in re.finditer(r"^#{2,3} Exercise (\d\.\d):.*\((written, )?(\d+) points\)$", text, flags=re.M)}
    exercises = chapter_exercises(chapter)
    assert stated == {eid: (e.points, e.written) for eid, e in exercises.items()}
    assert sum(e.points for e in exercises.values() if not e.written) == 10     # docs/teaching.md's table
    code = [c for c in nb.cells if c.cell_type == "code"]
    for eid, exercise in exercises.items():
        answers = [c for c in code if defines_answer(c, exercise)]
        checks = [c for c in code if f'check_exercise("{eid}", {exercise.name})' in c.source]
        assert len(answers) == 1 and len(checks) == 1, eid
        assert code.index(answers[0]) < code.index(checks[0])
        if not solutions:                                                      # the committed stub output
            assert checks[0].outputs == stub_check_outputs(eid), eid
    score = [c for c in code if f"chapter_score({chapter})" in c.source]
    assert len(score) == 1 and code.index(score[0]) > max(code.index(c) for c in code if "check_exercise(" in c.source)
    if not solutions:
        assert score[0].outputs == score_outputs(chapter)


def test_chapter_score_adds_up_the_checks_run_here(capsys):
    _RESULTS.clear()
    check_exercise("1.1", lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T))
    check_exercise("1.2", lambda *args: (_ for _ in ()).throw(NotImplementedError()))
    check_exercise("1.4", "MQA shares one key and value head between all query heads.")
    capsys.readouterr()
    score = chapter_score(1)
    lines = capsys.readouterr().out.splitlines()
    assert (score.points, score.max_points, score.written_points) == (2, 10, 2)
    assert lines[0] == "Chapter 1: 2 of 10 points (+ 2 for the written answer, read by your teacher)"
    assert lines[1].split() == ["1.1", "PASS", "2/2"]
    assert lines[2].split() == ["1.2", "NOT", "ATTEMPTED", "0/4"]
    assert lines[3].split() == ["1.3", "NOT", "CHECKED", "0/4", "-", "run", "its", "check", "cell"]
    assert lines[4].split()[:2] == ["1.4", "ANSWERED"]


def test_a_verdict_prints_once_in_a_notebook():
    """check_exercise returns a str the notebook does not echo under the line it printed."""
    from IPython.core.formatters import DisplayFormatter

    status = Status(PASS)
    assert status == PASS and DisplayFormatter().format(status) == ({}, {})


def test_switched_off_is_temporary_even_when_the_answer_is_interrupted():
    code = causal_mask.__code__

    def interrupted(T, S):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        forbidding(interrupted, [causal_mask], lambda called: "no")(2, 3)
    assert causal_mask.__code__ is code and causal_mask(2, 3) is not None


def test_a_decorated_method_is_switched_off_and_restored():
    """Router.update_bias is wrapped by torch.no_grad (a closure): its inner function is the one switched off."""
    router = Router(4, 4, 1, use_bias=True, bias_update_rate=0.1)
    with switched_off([Router.update_bias], "no") as hits:
        with pytest.raises(AssertionError, match="no"):
            router.update_bias(torch.tensor([4, 0, 0, 0]))
    assert hits == ["components.router.Router.update_bias"]
    router.update_bias(torch.tensor([4, 0, 0, 0]))
    assert router.bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])


def test_a_caught_call_still_fails():
    def sneaky(T, S):
        try:
            return causal_mask(T, S)
        except AssertionError:
            return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)    # right, but only after trying

    with pytest.raises(Delegated, match="causal_mask"):
        forbidding(sneaky, [causal_mask], lambda called: f"called {called}")(3, 4)


def test_an_answer_without_the_library_is_untouched_and_a_stub_is_not_attempted():
    assert check_exercise("1.1", lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T),
                          verbose=False) == PASS
    for chapter in CHAPTERS:
        for exercise in chapter_exercises(chapter).values():
            if not exercise.written:
                assert check_exercise(exercise.id, lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()),
                                      verbose=False) == NOT_ATTEMPTED


def test_fingerprint_ignores_rounding_noise_and_sees_a_change():
    base = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    assert fingerprint(base) == fingerprint(base + 1e-7) == fingerprint(-0.0 * base + base)
    assert fingerprint(base) != fingerprint(base.flip(0)) and fingerprint(base) != fingerprint(base.flatten())
