"""scripts/notebook_metadata.py: the committed notebooks carry the kernelspec that the README's set-up installs
(so JupyterLab does not rewrite it on the first autosave) and nbval cell tags instead of marker comments."""

import importlib.util
from pathlib import Path

import nbformat
from ipykernel.kernelspec import KERNEL_NAME, get_kernel_dict
from nbval.plugin import find_comment_markers, find_metadata_tags

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notebook_metadata", ROOT / "scripts" / "notebook_metadata.py")
notebook_metadata = importlib.util.module_from_spec(spec)
spec.loader.exec_module(notebook_metadata)


def test_the_kernelspec_is_the_one_setup_installs():
    """scripts/setup.sh runs `python -m ipykernel install --sys-prefix --name python3`; this is its kernel.json."""
    installed = get_kernel_dict()
    assert "--name python3" in (ROOT / "scripts" / "setup.sh").read_text() and KERNEL_NAME == "python3"
    assert notebook_metadata.KERNELSPEC == {"display_name": installed["display_name"],
                                            "language": installed["language"], "name": KERNEL_NAME}


def test_every_committed_notebook_is_current_and_its_code_has_no_nbval_markers():
    assert notebook_metadata.main(["--check"]) == 0
    for path in notebook_metadata.notebooks():
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"] == notebook_metadata.KERNELSPEC, path
        for cell in nb.cells:
            assert "NBVAL_" not in cell.source, (path, cell.source[:80])


def test_markers_become_the_tags_nbval_reads_and_a_rerun_changes_nothing():
    sources = ["# NBVAL_IGNORE_OUTPUT\nimport torch\nprint(torch.__version__)",
               "x = 1\n  # NBVAL_CHECK_OUTPUT\nprint(x)",
               "# NBVAL_RAISES_EXCEPTION\n1 / 0",
               "# NBVAL_SKIP\nslow()",
               "print('no marker')  # NBVAL_SKIP is not a marker here"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells[0].metadata["tags"] = ["colab-setup"]
    before = [dict(find_comment_markers(cell.source)) for cell in nb.cells]
    assert notebook_metadata.normalise(nb) is True
    assert [dict(find_metadata_tags(cell.metadata)) for cell in nb.cells] == before      # nbval: the same options
    assert [dict(find_comment_markers(cell.source)) for cell in nb.cells] == [{}] * 5
    assert nb.cells[0].source == "import torch\nprint(torch.__version__)"
    assert nb.cells[0].metadata["tags"] == ["colab-setup", "nbval-ignore-output"]
    assert nb.cells[1].source == "x = 1\nprint(x)" and nb.cells[4].source == sources[4]
    assert nb.metadata["kernelspec"]["display_name"] == "Python 3 (ipykernel)"
    assert notebook_metadata.normalise(nb) is False
