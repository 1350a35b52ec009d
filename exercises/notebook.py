"""What the grader and the release need to know about a chapter notebook's cells.

A chapter notebook's exercise cells are found by what they define: the stub `def NAME(` of an exercise,
or the written answer's `answer_N_M = ...`, the names listed in the chapter's `EXERCISES`. Nothing
depends on cell ids or tags, which a student's editor may drop. The chapter itself is read from the
notebook's metadata (`deepseek_from_scratch.chapter`), else from its file name (`03_...`), else from
its check cells (`check_exercise("3.1", ...)`).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import nbformat

from exercises import CHAPTERS, Exercise, chapter_exercises, find, score_lines, stub_result, verdict_line


def _stream(text: str) -> list:
    return [nbformat.v4.new_output("stream", name="stdout", text=text)]


def stub_check_outputs(exercise_id: str) -> list:
    """The output of an exercise's check cell while the stub is untouched (deterministic, so CI checks it)."""
    return _stream(verdict_line(stub_result(find(exercise_id))) + "\n")


def score_outputs(chapter: int) -> list:
    """The output of the chapter's score cell when every check ran on an untouched stub."""
    results = {eid: stub_result(e) for eid, e in chapter_exercises(chapter).items()}
    return _stream("\n".join(score_lines(chapter, results)[1]) + "\n")


def chapter_of(nb, path: Path | None = None) -> int | None:
    """The chapter a notebook belongs to (metadata, then file name, then its check cells), or None."""
    chapter = nb.metadata.get("deepseek_from_scratch", {}).get("chapter")
    if chapter in CHAPTERS:
        return chapter
    if path is not None and (m := re.search(r"(?:^|[^0-9])0?([1-8])_", path.name)):
        return int(m.group(1))
    calls = Counter(int(m.group(1)) for cell in nb.cells if cell.cell_type == "code"
                    for m in re.finditer(r"check_exercise\(\s*[\"']([1-8])\.\d", cell.source))
    return calls.most_common(1)[0][0] if calls else None


def _top_level(source: str) -> list[ast.stmt]:
    try:
        return ast.parse(source).body
    except SyntaxError:
        return []


def defines_answer(cell, exercise: Exercise) -> bool:
    """Whether this cell is the exercise's answer cell: it defines the function, or assigns the written answer."""
    if cell.cell_type != "code":
        return False
    for node in _top_level(cell.source):
        if isinstance(node, ast.FunctionDef) and node.name == exercise.name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == exercise.name
                                                for t in node.targets):
            return True
    if re.search(rf"^(def {re.escape(exercise.name)}\(|{re.escape(exercise.name)}\s*=)", cell.source, flags=re.M):
        return True                                # a cell that does not parse (a half-written answer) still counts
    return False


def stub_source(source: str, exercise: Exercise) -> str:
    """The cell reset to its stub: the signature and the comments right under it, then NotImplementedError;
    for a written answer, the instruction comment and an empty string."""
    if exercise.written:
        return (f"# Your answer, in a few sentences, between the quotes (the grader shows it to your teacher):\n"
                f'{exercise.name} = """\n"""')
    lines = source.splitlines()
    node = next((n for n in _top_level(source) if isinstance(n, ast.FunctionDef) and n.name == exercise.name), None)
    if node is None:
        raise ValueError(f"no top-level def {exercise.name}(...) to reset")
    first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    body_start = node.body[0].lineno - 1
    keep = lines[first:body_start]
    # the comments between the signature and the first statement describe the shapes: keep them
    keep = [line for line in keep if line.strip()]
    indent = re.match(r"\s*", lines[body_start]).group(0) or "    "
    return "\n".join(keep + [f"{indent}raise NotImplementedError"])
