"""Deterministic train/validation split by essay.

Splitting by essay (not by a token offset) keeps every validation essay unseen in training, so
validation loss measures generalisation to new text rather than memory of a neighbouring
paragraph. The validation essays are a seeded random subset: same seed and fraction, same split.
"""

from __future__ import annotations

import numpy as np


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1 (e.g. 0.1)")


def split_documents(documents: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str], str]:
    """Return (train_docs, val_docs, note); both sides keep the corpus order.

    With n >= 2 documents, round(n * val_fraction) of them (at least 1, at most n-1) go to
    validation. With a single document there is nothing to choose from, so its text is cut
    by characters at the paragraph boundary nearest the requested fraction; `note` says so.
    """
    check_val_fraction(val_fraction)
    n = len(documents)
    if n == 0:
        raise ValueError("the corpus holds no documents")
    if n == 1:
        train_text, val_text = _split_one(documents[0], val_fraction)
        note = (f"only one document: split it by characters at a paragraph boundary "
                f"({len(train_text):,} train / {len(val_text):,} validation characters)")
        return [train_text], [val_text], note
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    # 1) a seeded permutation picks the validation essays; 2) sort so both sides keep corpus order
    val_index = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [doc for i, doc in enumerate(documents) if i not in val_index]
    val = [doc for i, doc in enumerate(documents) if i in val_index]
    return train, val, ""


def _split_one(text: str, val_fraction: float) -> tuple[str, str]:
    """Cut one text near (1 - val_fraction) of its length, preferring a blank line, then a newline,
    then a space; both halves must keep some non-blank text."""
    target = round(len(text) * (1.0 - val_fraction))
    # a cut at i leaves non-blank text on both sides iff first < i <= last (the first and last non-blank
    # characters): found once, so the candidates cost O(len(text)), not a strip of each half per candidate
    first, last = len(text) - len(text.lstrip()), len(text.rstrip()) - 1
    for boundary in ("\n\n", "\n", " "):
        cuts = [i for i in _positions(text, boundary) if first < i <= last]
        if cuts:
            cut = min(cuts, key=lambda i: abs(i - target))
            return text[:cut].rstrip(), text[cut:].lstrip()
    cut = min(max(target, 1), len(text) - 1)
    return text[:cut], text[cut:]


def _positions(text: str, boundary: str) -> list[int]:
    """Indices just after each occurrence of `boundary`."""
    found, start = [], text.find(boundary)
    while start != -1:
        found.append(start + len(boundary))
        start = text.find(boundary, start + len(boundary))
    return found
