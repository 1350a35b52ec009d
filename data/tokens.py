"""Tokenising documents into one id stream per split, and the on-disk token cache.

Each split is one flat array: doc_0 <|endoftext|> doc_1 <|endoftext|> ... doc_n, so the model
learns where an essay ends. GPT-2's 50,257 ids fit in uint16, half the bytes of int32.

The cache key hashes everything that changes the ids: the raw input (file bytes or texts), the
split seed and fraction, and the tokenizer identity. Files are written with files.atomic_write:
to a temporary name in the same folder, then moved into place with os.replace (atomic on one
filesystem), so a crash or a concurrent run never leaves a half-written array behind; the small
meta JSON goes last and marks the entry complete.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from common.files import atomic_write
from constants import EOT_TOKEN_ID
from utils import get_tokenizer, tokenizer_identity

CACHE_FORMAT = 1            # bump when the layout of the cached arrays changes
ENCODE_CHUNK = 16           # documents per encode_ordinary_batch call (one progress-bar step)


def encode_split(documents: list[str], desc: str = "tokenizing", quiet: bool = False) -> np.ndarray:
    """Token ids of the documents joined by <|endoftext|> (id 50256), as uint16.

    `encode_ordinary` ignores special tokens, so an essay quoting "<|endoftext|>" stays text and
    the only 50256s are the separators we insert.
    """
    from tqdm import tqdm  # console bar; not tqdm.auto (it warns in notebooks without ipywidgets)

    enc = get_tokenizer()
    pieces: list[list[int]] = []
    with tqdm(total=len(documents), desc=desc, unit="doc", disable=True if quiet else None,   # None: TTY only
              leave=False) as bar:
        for start in range(0, len(documents), ENCODE_CHUNK):
            chunk = documents[start:start + ENCODE_CHUNK]
            for ids in enc.encode_ordinary_batch(chunk):
                if pieces:
                    pieces.append([EOT_TOKEN_ID])
                pieces.append(ids)
            bar.update(len(chunk))
    flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in pieces]) if pieces else np.zeros(0, np.int64)
    assert flat.size == 0 or flat.max() < 2**16, "token id does not fit uint16"
    return flat.astype(np.uint16)


def cache_key(input_fingerprint: str, val_fraction: float, seed: int) -> str:
    """Short hex key naming the cache entry of one (input, split, tokenizer) combination."""
    recipe = {"input_sha256": input_fingerprint, "val_fraction": float(val_fraction), "seed": int(seed),
              "tokenizer": tokenizer_identity(), "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def usable_cache_dir(cache_dir: Path) -> Path | None:
    """Create the cache dir and probe that we can write there; warn and return None if not."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
        return cache_dir
    except OSError as err:
        warnings.warn(f"token cache dir {cache_dir} is not writable ({err.strerror or err}); "
                      "continuing without a cache (tokenization will run every time)", stacklevel=3)
        return None


def _paths(cache_dir: Path, key: str) -> dict[str, Path]:
    return {name: cache_dir / f"tokens-{key}-{name}" for name in ("train.npy", "val.npy", "meta.json")}


def load_cached(cache_dir: Path | None, key: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The cached (train_ids, val_ids, meta) for `key`, or None when absent or unreadable."""
    if cache_dir is None:
        return None
    paths = _paths(cache_dir, key)
    try:
        meta = json.loads(paths["meta.json"].read_text(encoding="utf-8"))
        train = np.load(paths["train.npy"], allow_pickle=False)
        val = np.load(paths["val.npy"], allow_pickle=False)
    except (OSError, ValueError):   # missing, truncated or foreign files: rebuild
        return None
    if (not isinstance(meta, dict) or train.dtype != np.uint16 or val.dtype != np.uint16 or train.ndim != 1
            or val.ndim != 1 or meta.get("tokens") != [train.size, val.size]):
        return None
    n_vocab = tokenizer_identity()["n_vocab"]
    if any(ids.size and int(ids.max()) >= n_vocab for ids in (train, val)):
        # ids the tokenizer never makes (an edited or foreign file): the embedding lookup would fail at step 1
        warnings.warn(f"the token cache {paths['train.npy'].name} holds ids outside the tokenizer's {n_vocab}; "
                      "it was edited or damaged: tokenizing again", stacklevel=3)
        return None
    return train, val, meta


def save_cached(cache_dir: Path | None, key: str, train: np.ndarray, val: np.ndarray, meta: dict) -> None:
    """Write one cache entry (arrays first, meta last); a failure only costs the cache."""
    if cache_dir is None:
        return
    paths = _paths(cache_dir, key)
    try:
        atomic_write(paths["train.npy"], lambda f: np.save(f, train, allow_pickle=False))
        atomic_write(paths["val.npy"], lambda f: np.save(f, val, allow_pickle=False))
        meta = {**meta, "tokens": [int(train.size), int(val.size)]}
        atomic_write(paths["meta.json"], lambda f: f.write(json.dumps(meta, indent=1)), mode="w")
    except OSError as err:
        warnings.warn(f"could not write the token cache in {cache_dir} ({err}); continuing without it", stacklevel=3)
