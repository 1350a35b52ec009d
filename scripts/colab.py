"""Write the "Open in Colab" badge and the Colab set-up cell into every notebook, from one address.

    python scripts/colab.py            # rewrite the two cells in every chapter and solution notebook
    python scripts/colab.py --check    # exit 1 if a notebook's cells differ from what would be written

The address is `constants.REPOSITORY_URL` (a GitHub repository). Publishing under another address is one
edit there and one run of this script. The set-up cell puts the clone's root on the import path (nothing of
the project is installed as a package); on Colab it first clones the project, installs its dependencies and
moves into its notebooks/ folder.
Both cells are found again by their cell tags, so a re-run replaces them instead of adding more.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CommandLine  # noqa: E402
from constants import REPOSITORY_URL  # noqa: E402

BADGE_TAG, SETUP_TAG = "colab-badge", "colab-setup"
IGNORE_OUTPUT_TAG = "nbval-ignore-output"     # nbval does not compare the set-up cell's output (it names a path)
SETUP_PRINTS = "the project's modules are imported from "

SETUP_SOURCE = '''\
# Set-up. The project's modules are imported from the clone (installing it adds only its dependencies), so this
# cell puts the clone's root on the import path. On Colab it first clones the project and installs them.
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY_URL = "{url}"
if "google.colab" in sys.modules and not os.path.isfile("../pyproject.toml"):
    if not os.path.isdir("/content/{name}"):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY_URL, "/content/{name}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/{name}"], check=True)
    os.chdir("/content/{name}/notebooks")
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "constants.py").is_file()), None)
if ROOT is not None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
try:
    import constants           # the project's root, found above or already on PYTHONPATH (the grader's kernels)
except ImportError:
    raise RuntimeError("open this notebook from the project's notebooks/ folder, or put the clone on PYTHONPATH")
print("the project's modules are imported from", os.path.relpath(Path(constants.__file__).parent))'''


def github_path(url: str) -> str:
    """'https://github.com/OWNER/NAME' -> 'OWNER/NAME' (Colab opens notebooks by that path)."""
    prefix = "https://github.com/"
    if not url.startswith(prefix) or len(url[len(prefix):].strip("/").split("/")) != 2:
        raise ValueError(f"REPOSITORY_URL={url!r}: expected https://github.com/OWNER/NAME (edit constants.py)")
    return url[len(prefix):].strip("/")


def colab_cells(relative: str, url: str) -> list:
    """The badge (opening `relative`, a notebook's path in the repository) and the set-up cell."""
    repo = github_path(url)
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{repo}/blob/main/{relative})")
    setup = nbformat.v4.new_code_cell(SETUP_SOURCE.format(url=url, name=repo.split("/")[1]))
    # what the cell prints when run from notebooks/ (or notebooks/solutions/): the committed output stays whole
    folder = "/".join(relative.split("/")[:-1]) or "."
    printed = SETUP_PRINTS + os.path.relpath(".", folder) + "\n"
    setup.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    setup.execution_count = 1                             # the first cell a kernel runs (nbval: a run cell)
    badge.metadata["tags"], setup.metadata["tags"] = [BADGE_TAG], [SETUP_TAG, IGNORE_OUTPUT_TAG]
    return [badge, setup]


def shown(cell) -> tuple:
    """What a reader sees of a cell (its kind, source and printed text), its tags and its execution count."""
    return (cell.cell_type, cell.source, [o.get("text") for o in cell.get("outputs", [])], cell.metadata.get("tags"),
            cell.get("execution_count"))


def is_colab_cell(cell) -> bool:
    return bool({BADGE_TAG, SETUP_TAG} & set(cell.metadata.get("tags", [])))


def update(notebook: Path, relative: str, url: str) -> bool:
    """Put the two cells at the top of `notebook` (replacing earlier ones); True if the file changed."""
    nb = nbformat.read(notebook, as_version=4)
    old = [c for c in nb.cells if is_colab_cell(c)]
    new = colab_cells(relative, url)
    if [shown(c) for c in old] == [shown(c) for c in new] and nb.cells[:2] == old:
        return False
    nb.cells = new + [c for c in nb.cells if not is_colab_cell(c)]
    nbformat.write(nb, notebook)
    return True


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python scripts/colab.py", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report notebooks whose Colab cells are out of date")
    args = p.parse_args(argv)
    try:
        github_path(REPOSITORY_URL)
    except ValueError as err:
        print(f"colab.py: error: {err}", file=sys.stderr)
        return 2
    stale = []
    for path in notebooks():
        relative = path.relative_to(ROOT).as_posix()
        if args.check:
            nb = nbformat.read(path, as_version=4)
            if [shown(c) for c in nb.cells[:2]] != [shown(c) for c in colab_cells(relative, REPOSITORY_URL)]:
                stale.append(path)
        elif update(path, relative, REPOSITORY_URL):
            print(f"updated {path.relative_to(ROOT).as_posix()}")
    if stale:
        print("out of date (run python scripts/colab.py):", ", ".join(p.relative_to(ROOT).as_posix() for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
