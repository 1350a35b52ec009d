"""CI guard: every torch.load in the project passes weights_only=True (why: checkpoint.py's docstring).

The one deliberate exception is the test that proves a pickled checkpoint really runs code; it is
marked on its line with "unsafe on purpose".
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_files():
    for path in ROOT.rglob("*.py"):
        if not any(part.startswith(".") or part in {"build", "__pycache__"} for part in path.relative_to(ROOT).parts):
            yield path


def find_unsafe_loads(paths, root):
    offenders = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe and "unsafe on purpose" not in lines[node.lineno - 1]:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    return offenders


def test_every_torch_load_uses_weights_only():
    offenders = find_unsafe_loads(_python_files(), ROOT)
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_the_guard_catches_bare_and_false_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ntorch.load('a.pt')\ntorch.load('b.pt', weights_only=False)\n"
                   "torch.load('c.pt', weights_only=True)\n")
    assert find_unsafe_loads([bad], tmp_path) == ["bad.py:2", "bad.py:3"]
