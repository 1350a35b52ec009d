"""`prepare_data`: from wherever the essays are to two cached arrays of GPT-2 token ids.

    source -> documents -> essay-level split -> token ids (uint16) -> cache -> PreparedData

Every check on the input runs before anything is written, so a bad corpus raises a one-line
error and leaves no half-made cache behind. A cache hit skips parsing and tokenizing entirely.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from constants import DATA_CACHE_DIR, SEED, VAL_FRACTION
from data.sources import HOW_TO_GET_ESSAYS, display_path, fingerprint, read_documents, resolve_source
from data.split import check_val_fraction, split_documents
from data.tokens import cache_key, encode_split, load_cached, save_cached, usable_cache_dir


@dataclass
class DataSummary:
    """What `prepare_data` used and produced; str() prints a small table."""
    source: str
    n_essays_train: int
    n_essays_val: int
    chars_train: int
    chars_val: int
    tokens_train: int
    tokens_val: int
    from_cache: bool
    note: str = ""          # e.g. why a single document was split by characters

    def __str__(self) -> str:
        rows = [("", "train", "val"),
                ("essays", f"{self.n_essays_train:,}", f"{self.n_essays_val:,}"),
                ("characters", f"{self.chars_train:,}", f"{self.chars_val:,}"),
                ("tokens", f"{self.tokens_train:,}", f"{self.tokens_val:,}")]
        lines = [f"source: {self.source}",
                 f"tokens: {'loaded from cache' if self.from_cache else 'tokenized now'}"]
        lines += [f"{name:<12}{train:>12}{val:>12}" for name, train, val in rows]
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


@dataclass
class PreparedData:
    """Token ids of both splits (1-D uint16 arrays) and their summary."""
    train_ids: np.ndarray
    val_ids: np.ndarray
    summary: DataSummary
    cache_key: str = field(default="", repr=False)


def check_context(train_ids: np.ndarray, val_ids: np.ndarray, context_length: int | None) -> None:
    """A split shorter than context_length+1 tokens cannot yield one (input, target) window."""
    for name, ids in (("train", train_ids), ("validation", val_ids)):
        if ids.size == 0:
            raise ValueError(f"the {name} split is empty: the corpus is too small to split; use a larger corpus")
        if context_length is not None and ids.size < context_length + 1:
            raise ValueError(f"the {name} split has {ids.size:,} tokens but context_length={context_length} needs "
                             f"at least {context_length + 1:,}; use a larger corpus, a smaller context_length "
                             "or a different val_fraction")


def prepare_data(data_path: str | os.PathLike | None = None, val_fraction: float = VAL_FRACTION, seed: int = SEED,
                 context_length: int | None = None, cache_dir: str | os.PathLike | None = None,
                 use_hub: bool = True, quiet: bool = False) -> PreparedData:
    """Resolve the essays, split them by essay, tokenize (or load the cached ids) and summarise.

    Args:
        data_path: CSV/Parquet/JSONL with a `text` column, a .txt file, or a folder of .txt files.
            None: $DEEPSEEK_SCRATCH_DATA, else the local Hub copy, else the Hub, else the sample.
        val_fraction: share of essays held out for validation, in (0, 1).
        seed: picks which essays are held out.
        context_length: if given, each split must hold at least context_length+1 tokens.
        cache_dir: where token arrays (and a downloaded Hub copy) go; default data/cache/.
        use_hub: False never touches the network (a local Hub copy is still used).
        quiet: no progress bar or status lines (warnings still show).
    """
    check_val_fraction(val_fraction)
    if context_length is not None and int(context_length) < 1:
        raise ValueError(f"context_length={context_length} must be a positive number of tokens")
    cache_dir = Path(cache_dir) if cache_dir is not None else DATA_CACHE_DIR
    say = (lambda *a: None) if quiet else print
    # 1) which corpus, and its cache key (hashing raw bytes is cheap; no parsing yet)
    source = resolve_source(data_path, cache_dir, use_hub)
    key = cache_key(fingerprint(source), val_fraction, seed)
    # 2) a cache hit skips parsing and tokenization
    if (cached := load_cached(cache_dir if cache_dir.is_dir() else None, key)) is not None:
        train_ids, val_ids, meta = cached
        check_context(train_ids, val_ids, context_length)
        summary = DataSummary(source.description, *meta["essays"], *meta["chars"], train_ids.size, val_ids.size,
                              from_cache=True, note=meta.get("note", ""))
        say(f"tokens loaded from cache ({display_path(cache_dir)}, key {key})")
        return PreparedData(train_ids, val_ids, summary, key)
    # 3) parse, drop blank documents, split by essay
    documents = [doc for doc in read_documents(source) if doc.strip()]
    if not documents:
        raise ValueError(f"{source.description} holds no text (every document is empty or whitespace); "
                         f"{HOW_TO_GET_ESSAYS}")
    train_docs, val_docs, note = split_documents(documents, val_fraction, seed)
    if note:
        warnings.warn(note, stacklevel=2)
    # 4) tokenize, check the result is usable, and only then write the cache
    started = time.perf_counter()
    train_ids = encode_split(train_docs, "tokenizing train", quiet)
    val_ids = encode_split(val_docs, "tokenizing val", quiet)
    check_context(train_ids, val_ids, context_length)
    say(f"tokenized {len(documents):,} documents in {time.perf_counter() - started:.1f}s")
    essays = [len(train_docs), len(val_docs)]
    chars = [sum(map(len, train_docs)), sum(map(len, val_docs))]
    writable = usable_cache_dir(cache_dir)
    save_cached(writable, key, train_ids, val_ids, {"essays": essays, "chars": chars, "note": note})
    summary = DataSummary(source.description, *essays, *chars, train_ids.size, val_ids.size,
                          from_cache=False, note=note)
    return PreparedData(train_ids, val_ids, summary, key)
