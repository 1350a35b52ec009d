"""Keep the committed notebooks as JupyterLab saves them, and the lessons free of test markers.

    python scripts/notebook_metadata.py            # rewrite every chapter and solution notebook
    python scripts/notebook_metadata.py --check    # exit 1 if a notebook would change

Two things, both so that a student's notebook shows only the lesson and stays unmodified when opened:
  * the kernelspec is the one `scripts/setup.sh` installs (`python -m ipykernel install --name python3`,
    display name "Python 3 (ipykernel)"): JupyterLab rewrites any other one on its first autosave, which
    marked a committed notebook modified as soon as it was opened;
  * nbval's comment markers (`# NBVAL_IGNORE_OUTPUT`, `# NBVAL_CHECK_OUTPUT`, ...) become the cell tags
    that nbval reads just the same (`nbval-ignore-output`, `nbval-check-output`, ...: nbval.plugin's
    `metadata_tags`), and leave the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CommandLine  # noqa: E402

# what `python -m ipykernel install --sys-prefix --name python3` (scripts/setup.sh) writes into kernel.json
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# nbval's comment markers and the cell tags it reads for them (nbval.plugin: comment_markers, metadata_tags)
MARKER_TAGS = {f"NBVAL_{name}": f"nbval-{name.lower().replace('_', '-')}"
               for name in ("IGNORE_OUTPUT", "CHECK_OUTPUT", "RAISES_EXCEPTION", "SKIP")}


def marker_to_tags(cell) -> bool:
    """Move a code cell's nbval comment markers (a line that is only `# NBVAL_...`) into its tags; True if changed."""
    if cell.cell_type != "code":
        return False
    lines = cell.source.split("\n")
    markers = [MARKER_TAGS[line.strip().lstrip("#").strip()] for line in lines
               if line.strip().startswith("#") and line.strip().lstrip("#").strip() in MARKER_TAGS]
    if not markers:
        return False
    cell.source = "\n".join(line for line in lines
                            if not (line.strip().startswith("#") and line.strip().lstrip("#").strip() in MARKER_TAGS))
    tags = list(cell.metadata.get("tags", []))
    cell.metadata["tags"] = tags + [tag for tag in dict.fromkeys(markers) if tag not in tags]
    return True


def normalise(nb) -> bool:
    """Apply both rules to a notebook in memory; True if it changed."""
    changed = nb.metadata.get("kernelspec") != KERNELSPEC
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        changed |= marker_to_tags(cell)
    return changed


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python scripts/notebook_metadata.py", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report notebooks that would change")
    args = p.parse_args(argv)
    stale = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        if normalise(nb):
            if args.check:
                stale.append(path.relative_to(ROOT).as_posix())
            else:
                nbformat.write(nb, path)
                print(f"updated {path.relative_to(ROOT).as_posix()}")
    if stale:
        print("out of date (run python scripts/notebook_metadata.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
