"""python -m exercises grade NOTEBOOK_OR_FOLDER... [--csv OUT]   |   python -m exercises release OUT_DIR

See docs/teaching.md for the assignment workflow (release -> students -> grade)."""

import sys

from exercises.grade import main as grade
from exercises.release import main as release

USAGE = ("usage: python -m exercises grade NOTEBOOK_OR_FOLDER... [--csv OUT] | "
         "python -m exercises release OUT_DIR   (--help after either for its options)")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("grade", "release"):
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        print(f"python -m exercises: error: choose a command, grade or release; {USAGE}", file=sys.stderr)
        return 2
    if argv[0] == "grade":
        return grade(argv[1:])
    return release(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
