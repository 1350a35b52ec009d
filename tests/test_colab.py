"""scripts/colab.py: every notebook carries the Colab badge and set-up cell, written from one address."""

import importlib.util
import io
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("colab", ROOT / "scripts" / "colab.py")
colab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab)


def test_every_committed_notebook_has_current_colab_cells():
    assert colab.main(["--check"]) == 0


def test_update_replaces_the_cells_and_is_idempotent(tmp_path):
    path = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1")])
    nbformat.write(nb, path)
    assert colab.update(path, "notebooks/nb.ipynb", "https://github.com/a/b") is True
    cells = nbformat.read(path, as_version=4).cells
    assert "colab.research.google.com/github/a/b/blob/main/notebooks/nb.ipynb" in cells[0].source
    assert 'REPOSITORY_URL = "https://github.com/a/b"' in cells[1].source and cells[2].source == "# Title"
    assert colab.update(path, "notebooks/nb.ipynb", "https://github.com/a/b") is False        # nothing to do
    assert colab.update(path, "notebooks/nb.ipynb", "https://github.com/c/d") is True         # a new address
    cells = nbformat.read(path, as_version=4).cells
    assert len(cells) == 4 and "github/c/d/" in cells[0].source and "/content/d" in cells[1].source


def test_off_colab_the_setup_cell_only_puts_the_clones_root_on_the_import_path(monkeypatch):
    source = colab.colab_cells("notebooks/x.ipynb", "https://github.com/a/b")[1].source
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(ROOT)])
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(source, "setup-cell", "exec"), {})
    import sys
    assert sys.path[0] == str(ROOT)
    assert out.getvalue() == "the project's modules are imported from ..\n"
    assert not (ROOT / "notebooks" / "b").exists()          # nothing cloned


def test_the_setup_cell_refuses_a_folder_outside_the_clone_without_the_project_on_the_path(monkeypatch, tmp_path):
    source = colab.colab_cells("notebooks/x.ipynb", "https://github.com/a/b")[1].source
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in (str(ROOT), "", ".")])
    monkeypatch.delitem(__import__("sys").modules, "constants", raising=False)
    with pytest.raises(RuntimeError, match="notebooks/ folder"):
        exec(compile(source, "setup-cell", "exec"), {})


@pytest.mark.parametrize("url", ["github.com/a/b", "https://gitlab.com/a/b", "https://github.com/a"])
def test_a_bad_address_is_refused(url):
    with pytest.raises(ValueError, match="REPOSITORY_URL"):
        colab.github_path(url)
