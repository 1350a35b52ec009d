"""`python -m data`: resolve, split and tokenize the essays, then print what was used.

    python -m data [--data PATH|OWNER/NAME] [--val-fraction F] [--seed S] [--context-length T]
                   [--cache-dir DIR] [--no-hub]

A bad input prints one line and exits with code 2 (no traceback), like an argparse error.
"""

from __future__ import annotations

import sys
import warnings

from common.cli import CommandLine
from constants import DATA_CACHE_DIR, DATA_ENV_VAR, SEED, VAL_FRACTION
from data.prepare import prepare_data


def main(argv: list[str] | None = None) -> int:
    parser = CommandLine(prog="python -m data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", metavar="PATH|OWNER/NAME",
                        help="essays file or folder, or a Hugging Face dataset id OWNER/NAME when no such file or "
                        "folder exists (its 'text' column, else its longest string column; kept in the cache dir) "
                        f"(default: ${DATA_ENV_VAR}, then the local Hub copy, the Hub, the bundled sample)")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                        help=f"share of essays for validation (default {VAL_FRACTION})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"split seed (default {SEED})")
    parser.add_argument("--context-length", type=int, metavar="T", help="check each split holds T+1 tokens")
    parser.add_argument("--cache-dir", metavar="DIR", help=f"token cache (default {DATA_CACHE_DIR.name}/ "
                        "under data/)")
    parser.add_argument("--no-hub", action="store_true", help="never try to download from the Hugging Face Hub")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():   # restores the default warning printer on exit
        # a warning here is a message to the user: print it as one line, without the source line
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        try:
            prepared = prepare_data(args.data, val_fraction=args.val_fraction, seed=args.seed,
                                    context_length=args.context_length, cache_dir=args.cache_dir,
                                    use_hub=not args.no_hub)
        except (OSError, ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(prepared.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
