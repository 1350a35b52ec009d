"""Does a generated text copy the training essays? The longest run of words it shares with them.

    python -m data.overlap "some generated text"     [--data PATH]
    python -m data.overlap --file samples.txt         (one sample per line)

A language model trained on a small corpus can recite it. We report, for each sample, the longest
run of consecutive words that also occurs, in the same order, somewhere in the training split (the
essays the model was trained on, as the loader splits them). The README and the notebooks keep it
under 12 words for every sample they show, and never quote the essays beyond that.

Words are compared after lower-casing and stripping punctuation at their ends, so "Startups," and
"startups" match. The search is a binary search over the run length n: a shared run of n words
contains one of n - 1 words, so "some n-word run is shared" is monotone in n, and each test is one
pass over the corpus's n-grams.
"""

from __future__ import annotations

import re
import string
import sys

from common.cli import CommandLine
from data import prepare_data
from utils import get_tokenizer

_WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """The text's words, lower-cased, without punctuation at either end (empty ones dropped)."""
    cleaned = (w.strip(string.punctuation + "“”‘’—–").lower() for w in _WORD.findall(text))
    return [w for w in cleaned if w]


def _shares_run(sample: list[str], corpus: list[str], n: int) -> tuple[str, ...] | None:
    """One n-word run of `sample` that occurs in `corpus`, or None."""
    wanted = {tuple(sample[i:i + n]) for i in range(len(sample) - n + 1)}
    for i in range(len(corpus) - n + 1):
        gram = tuple(corpus[i:i + n])
        if gram in wanted:
            return gram
    return None


def longest_shared_run(sample: str | list[str], corpus: str | list[str]) -> tuple[int, str]:
    """(length, words) of the longest run of consecutive words of `sample` that also occurs in `corpus`."""
    sample = words(sample) if isinstance(sample, str) else sample
    corpus = words(corpus) if isinstance(corpus, str) else corpus
    lo, hi, best = 0, len(sample), ()
    while lo < hi:                       # invariant: a run of lo words is shared, none of hi + 1
        mid = (lo + hi + 1) // 2
        found = _shares_run(sample, corpus, mid)
        if found:
            lo, best = mid, found
        else:
            hi = mid - 1
    return lo, " ".join(best)


def training_words(data_path: str | None = None) -> list[str]:
    """The words of the training split, decoded from the same token ids the trainer reads."""
    prepared = prepare_data(data_path=data_path, context_length=8, quiet=True)
    return words(get_tokenizer().decode(prepared.train_ids.tolist()))


def main(argv: list[str] | None = None) -> int:
    p = CommandLine(prog="python -m data.overlap", description=__doc__.splitlines()[0])
    p.add_argument("text", nargs="*", help="samples to check (each argument one sample)")
    p.add_argument("--file", help="a text file with one sample per line")
    p.add_argument("--data", help="the essays, a path or a Hub dataset id (default: the loader's order: "
                   "$DEEPSEEK_SCRATCH_DATA, ...)")
    args = p.parse_args(argv)
    samples = list(args.text)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                samples += [line.strip() for line in f if line.strip()]
        except OSError as err:
            print(f"python -m data.overlap: error: cannot read --file {args.file}: {err.strerror}", file=sys.stderr)
            return 2
    if not samples:
        print("python -m data.overlap: error: no sample given; pass text or --file FILE", file=sys.stderr)
        return 2
    corpus = training_words(args.data)
    for sample in samples:
        n, run = longest_shared_run(sample, corpus)
        print(f"{n:>3} words shared: {run!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
