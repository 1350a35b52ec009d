"""data.overlap: the longest run of words a sample shares with the training text."""

import pytest

from data.overlap import longest_shared_run, main, words


def test_words_ignore_case_and_surrounding_punctuation():
    assert words("Startups, he said: “Grow.”") == ["startups", "he", "said", "grow"]


@pytest.mark.parametrize("sample, corpus, expected", [
    ("a b c d e", "x a b c y d e", (3, "a b c")),             # the longer of two shared runs
    ("a b c", "x y z", (0, "")),                              # nothing shared
    ("the cat sat", "The cat, sat! on the mat", (3, "the cat sat")),
    ("q r s t", "q r s t", (4, "q r s t")),                   # the whole sample
    ("b a b a", "a b a", (3, "b a b") if False else (3, "a b a")),
])
def test_longest_shared_run(sample, corpus, expected):
    assert longest_shared_run(sample, corpus) == expected


def test_matches_a_brute_force_search():
    import random

    rng = random.Random(0)
    for _ in range(50):
        corpus = [rng.choice("abc") for _ in range(40)]
        sample = [rng.choice("abc") for _ in range(12)]
        brute = max((j - i for i in range(len(sample)) for j in range(i + 1, len(sample) + 1)
                     if any(corpus[k:k + j - i] == sample[i:j] for k in range(len(corpus)))), default=0)
        assert longest_shared_run(sample, corpus)[0] == brute


def test_cli_needs_a_sample(capsys):
    assert main([]) == 2
    assert "no sample given" in capsys.readouterr().err
